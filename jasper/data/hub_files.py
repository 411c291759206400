"""Hub datasets read from a local mirror: an ``hf download`` of the repository (in the Hugging Face cache, found
by its id) or any folder holding its files in the repository's layout.

Why: `datasets` cannot stream a hub id from the cache (offline, ``load_dataset("HuggingFaceFW/fineweb-edu", ...)``
asks the hub and fails, downloaded or not) and fsspec's ``hf://`` lists files through the hub's API. So when the
hub is off (``HF_HUB_OFFLINE=1``), or a source names a ``mirror`` folder, jasper resolves the files itself: the
dataset card's ``configs`` (the README's YAML header) give each config's ``data_files``, matched in the local
folder; only the files present count, so a partial download (``hf download HuggingFaceFW/fineweb-edu --repo-type
dataset --include "sample/10BT/*"``) is a complete mirror of the configs it holds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import LocalEntryNotFoundError

log = logging.getLogger(__name__)
HF_DATASETS = "hf://datasets/"
# The `datasets` builder for each file suffix a hub dataset ships (the packaged builders of that library).
BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".csv": "csv",
    ".txt": "text",
    ".arrow": "arrow",
    ".tar": "webdataset",
}


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The dataset's snapshot folder in the Hugging Face cache (``HF_HUB_CACHE``), or None when it was never
    downloaded. Reads only the cache (the revision through ``refs/``), never the hub."""
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, repo_type="dataset", revision=revision, local_files_only=True
        )
    except LocalEntryNotFoundError:
        return None
    return Path(folder)


def local_mirror(repo_id: str, revision: str | None = None, mirror: str | None = None) -> Path | None:
    """The folder to read ``repo_id`` from: ``mirror`` when set; offline, its snapshot in the cache; None where
    `datasets` reads it itself (online, or ``repo_id`` is a local path). Offline without a copy, an error naming the
    two ways to give one."""
    if mirror is None and Path(repo_id).expanduser().exists():
        return None
    if mirror is not None:
        folder = Path(mirror).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the mirror of {repo_id} ({folder}) is not a folder: fix its mirror setting"
            )
        return folder
    if not huggingface_hub.is_offline_mode():
        return None
    folder = cached_snapshot(repo_id, revision)
    if folder is None:
        raise FileNotFoundError(
            f"{repo_id} is not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and the hub is off "
            f"(HF_HUB_OFFLINE=1): download it once (hf download {repo_id} --repo-type dataset [--include PATTERN]), "
            "or set the source's mirror to a folder holding its files"
        )
    return folder


def card_configs(folder: Path) -> dict[str, dict]:
    """``{config name: config}`` from the README's YAML header (the hub's dataset card); empty without one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    configs = huggingface_hub.DatasetCard.load(readme).data.to_dict().get("configs") or []
    return {c.get("config_name", "default"): c for c in configs}


def _patterns(config: dict, split: str) -> list[str]:
    files = config.get("data_files", [])
    if isinstance(files, str) or (files and not isinstance(files[0], dict)):  # one split, named train
        return ([files] if isinstance(files, str) else list(files)) if split == "train" else []
    for entry in files:
        if entry.get("split") == split:
            paths = entry["path"]
            return [paths] if isinstance(paths, str) else list(paths)
    return []


def builder_of(path: str) -> str | None:
    name = Path(path).name
    return next((BUILDERS[s] for s in sorted(BUILDERS, key=len, reverse=True) if name.endswith(s)), None)


def mirror_files(folder: Path, name: str | None, split: str, data_dir: str | None) -> tuple[str, list[str]]:
    """``(datasets builder, files)`` of config ``name``'s ``split`` in ``folder``; with no name, every data file
    under ``data_dir`` (or the folder), as `datasets` infers a repository without configs."""
    configs = card_configs(folder)
    if name is not None:
        if name not in configs:
            raise ValueError(f"no config {name!r} in {folder / 'README.md'} (configs: {sorted(configs)})")
        patterns = _patterns(configs[name], split)
    else:
        patterns = [f"{data_dir.strip('/')}/**/*" if data_dir else "**/*"]
    files = sorted(
        str(p) for pattern in patterns for p in folder.glob(pattern) if p.is_file() and builder_of(p.name)
    )
    if data_dir and name is not None:  # a config's files, only those under data_dir
        files = [f for f in files if Path(f).is_relative_to(folder / data_dir.strip("/"))]
    builders = {builder_of(f) for f in files}
    if not files or len(builders) != 1:
        found = "no data file" if not files else f"files of several kinds ({sorted(builders)})"
        raise FileNotFoundError(
            f"{found} for config {name!r}, split {split!r} in {folder} (patterns {patterns}): download those files "
            "into the mirror (hf download ... --include PATTERN)"
        )
    return builders.pop(), files


def load_mirror(folder: Path, name: str | None, split: str, data_dir: str | None, streaming: bool):
    """The split as `datasets` loads it from the hub, read from the local ``folder``."""
    from datasets import load_dataset  # heavy (pyarrow): only a hub source needs it

    builder, files = mirror_files(folder, name, split, data_dir)
    log.info("%s: %d %s file(s) of config %s from %s", split, len(files), builder, name, folder)
    return load_dataset(builder, data_files={split: files}, split=split, streaming=streaming)


def local_url(pattern: str) -> str:
    """An ``hf://datasets/<owner>/<name>[@revision]/<glob>`` pattern as a local glob in the cache's snapshot when
    the hub is off; any other pattern (or online) unchanged."""
    if not pattern.startswith(HF_DATASETS) or not huggingface_hub.is_offline_mode():
        return pattern
    owner, name, *rest = pattern.removeprefix(HF_DATASETS).split("/")
    repo, _, revision = f"{owner}/{name}".partition("@")
    folder = local_mirror(repo, revision or None)
    return str(folder / "/".join(rest))
