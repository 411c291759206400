"""What a model folder says about itself, read from its small files: no weights are loaded here.

Teachers use these to be described without being loaded (output dimension, truncation length, layer count) and
to key the TeacherCache on what they really are (a digest of their files, not only their name):

- :func:`local_folder`: a local folder as is; a hub id resolved in the local Hugging Face cache (never the network).
- :func:`folder_digest`: one digest of the files that shape a model's vectors (weights, config, tokenizer, remote
  code). Each file's SHA-256 is computed once and remembered on disk by (path, size, mtime, ctime, inode), so a
  15 GB teacher is read once, not on every run; files of a Hugging Face cache snapshot are symlinks to blobs named
  by their content hash, so they cost nothing to digest at all.
- :func:`sentence_transformer_dim`, :func:`sentence_transformer_max_length`: from ``modules.json`` and each
  module's config (Pooling, Dense), as sentence-transformers itself would compute them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id

from jasper.core.disk import cache_home

log = logging.getLogger(__name__)

# Files that change a model's vectors; alternative export formats and documentation are left out.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIGESTED_SUFFIXES = (*WEIGHT_SUFFIXES, ".json", ".txt", ".model", ".py", ".tiktoken")
SKIPPED_DIRS = {"onnx", "openvino", "coreml", "tflite"}
CHUNK = 1 << 20
POOLING_MODES = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)
# sentence-transformers modules that keep the dimension of their input.
SHAPE_KEEPING = ("Normalize", "Dropout", "LayerNorm", "WordWeights")


def read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def local_folder(model_name_or_path: str, revision: str | None = None) -> Path | None:
    """The folder the model's files are in, without any network access: a local folder, or the snapshot of a hub
    id in the local Hugging Face cache (its name is the commit); ``None`` when the files are not on this machine."""
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        return Path(snapshot_download(str(model_name_or_path), revision=revision, local_files_only=True))
    except Exception as error:  # noqa: BLE001 (not in the local cache, or not a valid hub id: both mean "unknown")
        log.debug("%s is not in the local Hugging Face cache: %s", model_name_or_path, error)
        return None


def check_hub_id(model_name_or_path: str, revision: str | None = None) -> None:
    """Fail at once, naming the id, when ``model_name_or_path`` (not a local folder) cannot be a model this run
    loads: not a valid hub id; offline (``HF_HUB_OFFLINE=1``) and not in the local Hugging Face cache; or online
    and unknown to the hub (one metadata request, 10 s at most: no 30-second retry inside transformers). An id with
    any snapshot in the local cache passes without the network; a hub that cannot be reached passes too (the load
    reports it)."""
    name = str(model_name_or_path)
    fix = "fix model_name_or_path in the student (model=) or teachers (teachers=) config"
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        raise ValueError(
            f"model {name!r} is neither a local folder nor a valid hub id ({error}): {fix}"
        ) from None
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"model {name} is not a local folder and not in the local Hugging Face cache, and the hub is off "
            f"(HF_HUB_OFFLINE=1): {fix} if it is mistyped, or download it once with the hub reachable "
            f"(hf download {name})"
        )
    try:
        HfApi().model_info(name, revision=revision, timeout=10)
    except RevisionNotFoundError:
        raise FileNotFoundError(f"model {name} has no revision {revision!r} on the hub") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"no model {name} on the Hugging Face hub (or it is private or gated and this machine is not logged "
            f"in: hf auth login): {fix}"
        ) from None
    except Exception as error:  # noqa: BLE001 (no network or a hub error: the load itself says what is wrong)
        log.warning("cannot ask the hub about %s: %s", name, error)


def hub_commit(folder: Path | None) -> str | None:
    """The commit of a Hugging Face cache snapshot (``.../snapshots/<commit>``), else ``None``."""
    if folder is not None and folder.parent.name == "snapshots":
        return folder.name
    return None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered under :func:`jasper.core.disk.cache_home` by (real path, size, mtime,
    ctime, inode): an edited or replaced file gets a new entry, an unchanged one is never read twice."""
    real = Path(os.path.realpath(path))
    stat = real.stat()
    key = [str(real), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    memo = (
        cache_home() / "digests" / f"{hashlib.blake2b(str(real).encode(), digest_size=10).hexdigest()}.json"
    )
    stored = read_json(memo)
    if isinstance(stored, dict) and stored.get("key") == key:
        return stored["sha256"]
    digest = hashlib.sha256()
    with open(real, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    try:  # a read-only home only costs the recomputation next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "sha256": value}))
        os.replace(tmp, memo)
    except OSError as error:
        log.debug("cannot remember the digest of %s: %s", real, error)
    return value


def _file_identity(path: Path) -> str:
    """A file's content identity: the blob name of a Hugging Face cache symlink (its content hash), or SHA-256."""
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if target.parent.name == "blobs":
            return f"blob:{target.name}"
    return file_sha256(path)


def select_digested(paths: list[str]) -> list[str]:
    """Of a model's files (relative POSIX paths), those that shape its vectors, sorted: weights (``*.bin`` only where
    no ``*.safetensors`` sits beside it, as transformers prefers safetensors), configs, tokenizer, remote code; no
    hidden files, no ONNX / OpenVINO exports, no documentation."""
    with_safetensors = {p.rpartition("/")[0] for p in paths if p.endswith(".safetensors")}
    return sorted(
        p
        for p in paths
        if p.endswith(DIGESTED_SUFFIXES)
        and not any(part.startswith(".") or part in SKIPPED_DIRS for part in p.split("/"))
        and not (p.endswith((".bin", ".pt", ".pth")) and p.rpartition("/")[0] in with_safetensors)
    )


def digested_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (recursively) that :func:`select_digested` keeps."""
    paths = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS]
        paths += [(Path(root) / name).relative_to(folder).as_posix() for name in names]
    return [folder / p for p in select_digested(paths)]


def _digest(identities: dict[str, str]) -> str | None:
    """One 16-hex digest of (relative path, content identity) pairs; ``None`` for no files."""
    if not identities:
        return None
    digest = hashlib.sha256()
    for path in sorted(identities):
        digest.update(f"{path}\0{identities[path]}\n".encode())
    return digest.hexdigest()[:16]


def folder_digest(folder: Path | None) -> str | None:
    """The digest of a model folder's :func:`digested_files` (relative paths and contents); ``None`` for none."""
    if folder is None:
        return None
    return _digest({p.relative_to(folder).as_posix(): _file_identity(p) for p in digested_files(folder)})


def hub_listing(repo_id: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """(commit, digest) of a hub repo that is not on this machine, from its file metadata alone (no download).

    The identities are those a local snapshot's blobs are named by (SHA-256 for LFS files, the git blob id for the
    rest), so the digest equals :func:`folder_digest` of the snapshot once it is downloaded. ``None`` offline
    (``HF_HUB_OFFLINE=1``) or when the hub cannot answer.
    """
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as error:  # noqa: BLE001 (no network, no such repo, no access: all mean "unknown")
        log.warning("cannot read the file list of %s from the hub: %s", repo_id, error)
        return None
    identities = {s.rfilename: f"blob:{s.lfs.sha256 if s.lfs else s.blob_id}" for s in info.siblings or []}
    kept = select_digested(list(identities))
    return info.sha, _digest({p: identities[p] for p in kept})


def config_value(folder: Path | None, *keys: str) -> int | None:
    """The first of ``keys`` in ``folder/config.json`` (or its ``text_config``), as an int."""
    config = read_json(folder / "config.json") if folder is not None else None
    if not isinstance(config, dict):
        return None
    for scope in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(scope.get(key), int):
                return scope[key]
    return None


def _modules(folder: Path) -> list[dict] | None:
    modules = read_json(folder / "modules.json")
    return modules if isinstance(modules, list) else None


def sentence_transformer_dim(folder: Path | None, dense_folder: str | None = None) -> int | None:
    """Output dimension of a sentence-transformers folder, from its module configs alone.

    Walks ``modules.json`` in order: the Transformer gives its hidden size, Pooling gives
    ``word_embedding_dimension`` times the number of pooling modes it concatenates, Dense gives ``out_features``
    (of ``dense_folder`` instead of the folder ``modules.json`` names, when given: stella's ``2_Dense_8192``),
    Normalize and the like keep the dimension. ``None`` for any module it does not know (custom code), so the
    caller falls back to loading the model. A folder without ``modules.json`` is a plain transformers model that
    sentence-transformers mean-pools: its hidden size.
    """
    if folder is None:
        return None
    modules = _modules(folder)
    if modules is None:
        return config_value(folder, "hidden_size", "d_model", "dim")
    dim = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = folder / module.get("path", "")
        if kind == "Transformer":
            dim = config_value(path, "hidden_size", "d_model", "dim")
        elif kind == "Pooling":
            config = read_json(path / "config.json") or {}
            modes = sum(bool(config.get(mode)) for mode in POOLING_MODES)
            width = config.get("word_embedding_dimension")
            dim = width * modes if isinstance(width, int) and modes else None
        elif kind == "Dense":
            dense = folder / dense_folder if dense_folder else path
            dim = (read_json(dense / "config.json") or {}).get("out_features")
        elif kind not in SHAPE_KEEPING:
            return None
        if dim is None:
            return None
    return dim


def sentence_transformer_max_length(folder: Path | None) -> int | None:
    """The truncation length sentence-transformers applies: ``max_seq_length`` of the Transformer module's
    ``sentence_bert_config.json``, else (as sentence-transformers does) the smaller of the model's position
    embeddings and the tokenizer's ``model_max_length``."""
    if folder is None:
        return None
    module = next(
        (m for m in _modules(folder) or [] if str(m.get("type", "")).endswith("Transformer")), {"path": ""}
    )
    path = folder / module.get("path", "")
    stored = (read_json(path / "sentence_bert_config.json") or {}).get("max_seq_length")
    if isinstance(stored, int):
        return stored
    limits = [
        config_value(path, "max_position_embeddings"),
        (read_json(path / "tokenizer_config.json") or {}).get("model_max_length"),
    ]
    limits = [v for v in limits if isinstance(v, int) and v < 10**9]  # tokenizers write 1e30 for "no limit"
    return min(limits) if limits else None


def sentence_transformer_layers(folder: Path | None) -> int | None:
    """Layer count of the Transformer module of a sentence-transformers folder (or a plain model folder)."""
    if folder is None:
        return None
    module = next(
        (m for m in _modules(folder) or [] if str(m.get("type", "")).endswith("Transformer")), {"path": ""}
    )
    return config_value(folder / module.get("path", ""), "num_hidden_layers", "num_layers", "n_layer")
