"""Every head of a model from one encoding of each text: the adapters ``evaluate.py`` runs models through.

A jasper student (:class:`StudentHeads`: tokenize -> pooled once per text -> project to every head; students that
share an encoder share the pooled states), a sentence-transformers model (:class:`SentenceTransformerHeads`: with a
Router, as a jasper export has, the modules before it run once and each route is applied to their output), and
:class:`VectorCache`, which encodes each distinct text once and serves one ``Encoder`` per head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from jasper.evaluation.encoder import Encoder
from jasper.evaluation.onnx_model import load_onnx
from jasper.models.encoders import weights_digest
from jasper.storage.checkpoints import EXPORT_FILE, is_deepspeed_dir, load_student


class StudentHeads:
    """A jasper Student: tokenize -> pooled once per text -> project to every head."""

    def __init__(self, student, name: str, pooled_cache: dict | None = None) -> None:
        self.student = student.eval()
        self.name = name
        self.heads = {h: student.head_dim(h) for h in student.head_names}
        self.pooled_cache = {} if pooled_cache is None else pooled_cache
        self.key = encoder_fingerprint(student)

    @torch.inference_mode()
    def encode_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if (self.key, t) not in self.pooled_cache]
        if missing:
            device = next(self.student.parameters()).device  # a student training on a GPU (dev_eval)
            batch = self.student.tokenize(missing).to(device)
            pooled = self.student.pooled(batch["input_ids"], batch["attention_mask"])  # (B, H)
            self.pooled_cache.update({(self.key, t): row for t, row in zip(missing, pooled, strict=True)})
        pooled = torch.stack([self.pooled_cache[(self.key, t)] for t in texts])
        return {h: v.cpu() for h, v in self.student.project(pooled).items()}


def encoder_fingerprint(student) -> str:
    """Encoder weights + tokenisation settings: students with equal fingerprints give equal pooled states."""
    return f"{student.model_name_or_path}|{student.max_length}|{student.prompt}|{weights_digest(student.encoder)}"


class SentenceTransformerHeads:
    """A sentence-transformers model. With a Router (a jasper export), the modules before it run once and every
    route is applied to their output; ``jasper_export.json`` truncate_dim heads are prefixes, renormalised."""

    def __init__(self, model, name: str, folder: str | Path | None = None) -> None:
        # sentence-transformers: heavy to import, and needed only where such a model is evaluated
        from sentence_transformers.sentence_transformer.modules import Router

        self.model = model.eval()
        self.name = name
        modules = list(model)
        self.router_at = next((i for i, m in enumerate(modules) if isinstance(m, Router)), None)
        dim = model.get_embedding_dimension()
        if self.router_at is not None:
            router = modules[self.router_at]
            self.routes = list(router.sub_modules)
            self.heads = {r: _route_dim(router.sub_modules[r]) for r in self.routes}
        else:
            self.routes = []
            self.heads = {"": dim}
        self.truncations: dict[str, int] = {}
        info = _export_info(folder)
        if info is not None:
            for head, spec in info["heads"].items():
                if "truncate_dim" in spec:
                    self.truncations[head] = int(spec["truncate_dim"])
            if self.router_at is None:  # a prefix-mode export: name the full output after FC1
                self.heads = {"fc1": dim}
            self.heads.update(self.truncations)
        name_prompt = model.default_prompt_name
        self.prompt = model.prompts.get(name_prompt) if name_prompt else None

    @torch.inference_mode()
    def encode_batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        features = self.model.preprocess(list(texts), prompt=self.prompt or None)
        features = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in features.items()}
        modules = list(self.model)
        if self.router_at is None:
            for module in modules:
                features = module(features)
            outputs = {next(iter(self.heads)): features["sentence_embedding"]}
        else:
            for module in modules[: self.router_at]:
                features = module(features)
            outputs = {}
            for route in self.routes:
                out = dict(features)
                for module in modules[self.router_at].sub_modules[route]:
                    out = module(out)
                for module in modules[self.router_at + 1 :]:
                    out = module(out)
                outputs[route] = out["sentence_embedding"]
        full = next(iter(outputs.values()))
        for head, d in self.truncations.items():
            outputs[head] = full[:, :d]
        return {h: F.normalize(v.float(), dim=-1).cpu() for h, v in outputs.items()}


def _route_dim(sequential) -> int:
    for module in reversed(list(sequential)):
        if hasattr(module, "get_embedding_dimension"):
            return int(module.get_embedding_dimension())
    raise ValueError("cannot tell a Router route's output dimension")


def _export_info(folder: str | Path | None) -> dict | None:
    path = Path(folder) / EXPORT_FILE if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


class VectorCache:
    """Encodes each distinct text once (for every head) and serves one `Encoder` per head from the cache.

    ``progress``: a progress bar of the texts encoded so far (out of ``total`` distinct texts, when known).
    """

    def __init__(self, model, batch_size: int = 64, progress: bool = False, total: int | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.index: dict[str, int] = {}
        self.rows: dict[str, list[torch.Tensor]] = {h: [] for h in model.heads}
        self.seconds = 0.0
        self.bar = tqdm(total=total, desc=f"encoding {model.name}", unit="text", disable=not progress)

    def encoder(self, head: str) -> Encoder:
        def encode(texts: list[str]) -> torch.Tensor:
            missing = [t for t in dict.fromkeys(texts) if t not in self.index]
            start = time.perf_counter()
            for i in range(0, len(missing), self.batch_size):
                chunk = missing[i : i + self.batch_size]
                out = self.model.encode_batch(chunk)
                for j, text in enumerate(chunk):
                    self.index[text] = len(self.index)
                    for h, rows in self.rows.items():
                        rows.append(out[h][j])
                self.bar.update(len(chunk))
            self.seconds += time.perf_counter() - start
            return torch.stack([self.rows[head][self.index[t]] for t in texts])

        return encode

    def close(self) -> None:
        self.bar.close()


def load_model(
    spec: str | Mapping,
    name: str,
    repo: Path,
    max_length: int | None = None,
    seed: int = 0,
    pooled_cache: dict | None = None,
):
    """`StudentHeads` or `SentenceTransformerHeads` from a path (relative paths: to the repo root) or a
    ``{path, init}`` mapping (``init: true``: a fresh student built from the checkpoint's config, weights not
    loaded, seeded with ``seed``) or ``{path, onnx: FILE}`` (an exported folder with its encoder run from the ONNX
    graph FILE, e.g. ``onnx/model_qint8_avx512_vnni.onnx``; ``threads``: ONNX Runtime's threads)."""
    spec = {"path": spec} if isinstance(spec, str) else dict(spec)
    raw = str(spec["path"])
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else repo / path
    overrides = {"max_length": max_length} if max_length else {}
    is_student = path.is_file() or is_deepspeed_dir(path)
    if spec.get("init"):
        if not is_student:
            raise ValueError(f"model {name}: init=true needs a student checkpoint, got {path}")
        torch.manual_seed(seed)
        student, _ = load_student(path, weights=False, **overrides)
        return StudentHeads(student, name, pooled_cache)
    if is_student:
        student, _ = load_student(path, **overrides)
        return StudentHeads(student, name, pooled_cache)
    # sentence-transformers: heavy to import, and only a sentence-transformers model needs it
    from sentence_transformers import SentenceTransformer

    folder = None
    if spec.get("onnx"):  # an export's ONNX graph (onnx/model.onnx or an int8 one) serves the encoder
        model = load_onnx(path, str(spec["onnx"]), spec.get("threads"))
        folder = path
    elif path.is_dir():
        folder = path
        model = SentenceTransformer(str(path), device="cpu")
    elif raw.startswith(("/", "./", "../", "~")) or Path(raw).suffix in (".pt", ".ckpt"):
        raise FileNotFoundError(f"model {name}: {path} does not exist")
    else:  # a hub id (offline: must be in the local cache)
        model = SentenceTransformer(raw, device="cpu")
    if max_length:
        model.max_seq_length = max_length
    return SentenceTransformerHeads(model, name, folder)
