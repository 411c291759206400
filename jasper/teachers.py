"""Teachers: frozen embedding models whose normalised, concatenated vectors the student learns to reproduce.

Jasper's teachers are NV-Embed-v2 (4096-d) and stella_en_1.5B_v5 (8192-d head): each teacher's vectors are
L2-normalised, concatenated (12288-d) and normalised again. The dimension is read off the teachers, never typed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from jasper.student import check_model_path, load_encoder, mean_pool

log = logging.getLogger(__name__)
POOLINGS = ("mean", "cls", "last")


class Teacher(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        """L2-normalised float32 vectors ``(N, dim)`` on the CPU, rows in the order of ``texts``."""
        ...


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class SentenceTransformerTeacher:
    """Any sentence-transformers model (its own pooling, dense and normalisation modules)."""

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None = None,
        prompt: str = "",
        max_length: int | None = None,
        revision: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        check_model_path(model_name_or_path)
        model_kwargs = {"dtype": getattr(torch, dtype)} if dtype else None
        self.model = SentenceTransformer(
            model_name_or_path,
            device=_device(device),
            revision=revision,
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs,
        )
        if max_length is not None:
            self.model.max_seq_length = max_length
        self.model.eval()
        self.name = name or str(model_name_or_path)
        self.prompt = prompt
        self.max_length = self.model.max_seq_length
        dimension = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = dimension()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            prompt=self.prompt or None,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return F.normalize(vectors.float().cpu(), dim=-1)


class HuggingFaceTeacher:
    """A plain ``AutoModel`` with its own pooling (mean / cls / last token), prompt and max length.

    ``num_layers`` keeps the first N layers, so the student's own initialisation can be one of its teachers.
    """

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None = None,
        pooling: str = "mean",
        prompt: str = "",
        max_length: int = 512,
        num_layers: int | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"teacher pooling={pooling!r} is not one of {POOLINGS}")
        self.device = _device(device)
        self.model = load_encoder(model_name_or_path, num_layers, revision).to(self.device).eval()
        if dtype:
            self.model.to(getattr(torch, dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, revision=revision)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name or str(model_name_or_path)
        self.pooling = pooling
        self.prompt = prompt
        self.max_length = max_length
        self.dim = self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                [self.prompt + t for t in texts[start : start + batch_size]],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            chunks.append(F.normalize(self._pool(hidden, batch["attention_mask"]).float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)

    def _pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "mean":
            return mean_pool(hidden, mask)
        if self.pooling == "cls":
            return hidden[:, 0]
        last = mask.sum(dim=1) - 1  # right padding: the last real token of each row
        return hidden[torch.arange(len(hidden), device=hidden.device), last]


class TeacherEnsemble:
    """Normalise each teacher's vectors, concatenate them, normalise the concatenation."""

    def __init__(self, teachers: Sequence[Teacher], batch_size: int = 32, online: bool = False) -> None:
        if not teachers:
            raise ValueError("no teachers configured: add at least one under teachers.members")
        self.teachers = list(teachers)
        self.batch_size = batch_size
        self.online = online  # True: encode in memory at setup, never read or write the TeacherCache

    @property
    def dim(self) -> int:
        return sum(t.dim for t in self.teachers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def describe(self) -> list[dict]:
        """Everything that changes a teacher's vectors (used to key cached vectors)."""
        return [
            {
                "name": t.name,
                "dim": t.dim,
                "prompt": getattr(t, "prompt", ""),
                "max_length": getattr(t, "max_length", None),
                "pooling": getattr(t, "pooling", "sentence-transformers"),
            }
            for t in self.teachers
        ]

    def encode(self, texts: Sequence[str], show_progress: bool = True) -> Tensor:
        """``(N, sum of teacher dims)`` float32 vectors; raises on NaN/inf so bad vectors never reach training."""
        # Longest first, so each batch pads little and memory peaks at the start; rows return in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        ordered = [texts[i] for i in order]
        step = self.batch_size * 8
        parts = []
        for teacher in self.teachers:
            chunks = [
                teacher.encode(ordered[start : start + step], self.batch_size)
                for start in tqdm(
                    range(0, len(ordered), step), desc=f"teacher {teacher.name}", disable=not show_progress
                )
            ]
            part = torch.cat(chunks) if chunks else torch.empty(0, teacher.dim)
            check_finite(part, teacher.name)
            parts.append(F.normalize(part, dim=-1))
        vectors = F.normalize(torch.cat(parts, dim=-1), dim=-1)
        return vectors[torch.argsort(torch.tensor(order, dtype=torch.long))] if order else vectors


def check_finite(vectors: Tensor, source: str) -> None:
    bad = ~torch.isfinite(vectors).all(dim=-1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{int(bad.sum())} vector(s) from {source} contain NaN/inf (first rows: {rows}); "
            "check the teacher's dtype (fp16 overflow: try dtype=bfloat16 or float32) and the input texts"
        )
