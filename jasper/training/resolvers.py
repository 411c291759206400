"""OmegaConf resolvers used by conf/ (registered on import; the entry points import this module)."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from jasper.models.packaged import packaged_minilm, packaged_mpnet
from jasper.training.sweeps import readable_subdir


def wandb_offline() -> bool:
    """wandb runs offline unless an API key is set (or WANDB_MODE=online)."""
    return os.environ.get("WANDB_MODE", "") != "online" and not os.environ.get("WANDB_API_KEY")


def sweep_subdir(overrides: str, stage: int) -> str:
    """A multirun job's folder: ``stage<k>`` under its other overrides written readably (``mrl_dims=128,64/stage3``;
    see `jasper.training.sweeps.readable_subdir`). Jobs that differ only in ``stage`` share a parent folder, so stage k finds
    stage k-1 beside it; the full overrides are in each job's .hydra/overrides.yaml."""
    return readable_subdir(overrides, stage)


def kept_layers(num_layers, layers) -> str:
    """How a cut model's name shows the layers it keeps: ``[:3]`` (the first 3), ``[0,2,5]`` (those), ``""`` (all)."""
    if layers is not None:
        return "[" + ",".join(str(i) for i in layers) + "]"
    return "" if num_layers is None else f"[:{num_layers}]"


def register_resolvers() -> None:
    for name, function in [
        ("packaged_minilm", packaged_minilm),
        ("packaged_mpnet", packaged_mpnet),
        ("wandb_offline", wandb_offline),
        ("sweep_subdir", sweep_subdir),
        ("kept_layers", kept_layers),
    ]:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()
