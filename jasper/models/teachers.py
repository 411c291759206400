"""Teachers: frozen embedding models whose normalised, concatenated vectors the student learns to reproduce.

Jasper's teachers are NV-Embed-v2 (4096-d) and stella_en_1.5B_v5 (8192-d head): each teacher's vectors are
L2-normalised, concatenated (12288-d) and normalised again. The dimension is read off the teachers, never typed.

A teacher is a description (name, path, revision, prompt, pooling, max length, layers, dtype, dim) until it is
asked to encode: its model loads on the first ``encode``. Everything the TeacherCache keys on is read from the
model's small files (``jasper.models.model_files``), so a run whose vectors are all cached never loads a teacher: with
NV-Embed-v2 (7B) and stella (1.5B) that is minutes and tens of GB per rank saved on every stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoTokenizer

from jasper.models.encoders import check_model_path, load_encoder, mean_pool
from jasper.models.model_files import (
    config_value,
    folder_digest,
    hub_commit,
    hub_listing,
    local_folder,
    sentence_transformer_dim,
    sentence_transformer_layers,
    sentence_transformer_max_length,
)

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


class LazyTeacher:
    """What the two teacher kinds share: a description that loads its model on first use.

    ``dim`` is known without loading. The cheapest correct source is the model's own small files, read as its
    library would read them (``config.json``'s hidden size; for sentence-transformers, ``modules.json`` and the
    Pooling / Dense configs): they are on disk whenever the model is, they cost a few kB, and they do not depend
    on a cache having been built (the cache manifest would, and would leave the first run to load the model
    anyway). Where the files do not tell (a custom-code module), ``dim`` in the config gives it; failing both, the
    model is loaded once to ask it. Whatever the source, the loaded model's dimension is checked against it.

    ``weights`` is a digest of the model's files (``jasper.models.model_files.folder_digest``: weights, config,
    tokenizer, remote code), computed without loading them and remembered across runs; the TeacherCache keys on it.
    """

    pooling = "sentence-transformers"
    num_layers: int | None = None

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None,
        prompt: str,
        revision: str | None,
        device: str | None,
        dtype: str | None,
        dim: int | None,
    ) -> None:
        check_model_path(model_name_or_path)
        self.model_name_or_path = str(model_name_or_path)
        self.name = name or self.model_name_or_path
        self.prompt = prompt
        self.revision = revision
        self.device = _device(device)
        self.dtype = dtype
        self.configured_dim = dim
        self._model = None

    # The description: read from files, never from a loaded model.
    @cached_property
    def folder(self) -> Path | None:
        """Where the model's files are on this machine (a hub id: its snapshot in the local HF cache), or None."""
        return local_folder(self.model_name_or_path, self.revision)

    @cached_property
    def hub(self) -> tuple[str, str | None] | None:
        """(commit, digest) from the hub's file metadata, for a hub id whose files are not on this machine."""
        if self.folder is not None:
            return None
        return hub_listing(self.model_name_or_path, self.revision)

    @cached_property
    def commit(self) -> str | None:
        """The configured revision, or the commit of the hub snapshot the model loads from."""
        return self.revision or hub_commit(self.folder) or (self.hub[0] if self.hub else None)

    @cached_property
    def weights(self) -> str | None:
        digest = folder_digest(self.folder) if self.folder is not None else (self.hub or (None, None))[1]
        if digest is None:
            log.warning(
                "teacher %s: its files are neither on this machine nor listed by the hub (%s), so its cache key "
                "holds no weights digest",
                self.name,
                self.model_name_or_path,
            )
        return digest

    @cached_property
    def dim(self) -> int:
        dim = self.configured_dim or self.described_dim()
        if dim is None:
            log.info("teacher %s: output dimension not in its files; loading the model to read it", self.name)
            dim = self.loaded_dim(self.model)
        return int(dim)

    def described_dim(self) -> int | None:
        raise NotImplementedError

    # The model: loaded on first use.
    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self):
        if self._model is None:
            log.info("loading teacher %s from %s", self.name, self.model_name_or_path)
            model = self.load()
            expected = self.__dict__.get("dim") or self.configured_dim or self.described_dim()
            actual = self.loaded_dim(model)
            if expected is not None and expected != actual:
                raise ValueError(
                    f"teacher {self.name}: its config gives a {expected}-d output but the loaded model gives "
                    f"{actual}-d; set dim: {actual} in its teachers config (or fix its dim: key)"
                )
            self._model = model
        return self._model

    def load(self):
        raise NotImplementedError

    def loaded_dim(self, model) -> int:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        """A DataLoader worker or a spawned rank gets the description, not the loaded model."""
        return {**self.__dict__, "_model": None}


class SentenceTransformerTeacher(LazyTeacher):
    """Any sentence-transformers model (its own pooling, dense and normalisation modules).

    ``max_length`` unset: the truncation length the model's ``sentence_bert_config.json`` gives (as
    sentence-transformers would apply it), read without loading.
    """

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
        dim: int | None = None,
    ) -> None:
        super().__init__(model_name_or_path, name, prompt, revision, device, dtype, dim)
        self.configured_max_length = max_length
        self.trust_remote_code = trust_remote_code

    @cached_property
    def max_length(self) -> int | None:
        return self.configured_max_length or sentence_transformer_max_length(self.folder)

    @cached_property
    def num_layers(self) -> int | None:
        return sentence_transformer_layers(self.folder)

    def described_dim(self) -> int | None:
        return sentence_transformer_dim(self.folder)

    def load(self):
        from sentence_transformers import SentenceTransformer  # heavy; only a teacher that encodes needs it

        model_kwargs = {"dtype": getattr(torch, self.dtype)} if self.dtype else None
        model = SentenceTransformer(
            self.model_name_or_path,
            device=self.device,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            model_kwargs=model_kwargs,
        )
        if self.max_length is not None:
            model.max_seq_length = self.max_length
        return model.eval()

    def loaded_dim(self, model) -> int:
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(dimension())

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


class HuggingFaceTeacher(LazyTeacher):
    """A plain ``AutoModel`` with its own pooling (mean / cls / last token), prompt and max length.

    ``num_layers`` keeps the first N layers, so the student's own initialisation can be one of its teachers
    (unset: every layer, read from ``config.json``).
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
        dim: int | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"teacher pooling={pooling!r} is not one of {POOLINGS}")
        super().__init__(model_name_or_path, name, prompt, revision, device, dtype, dim)
        self.pooling = pooling
        self.max_length = max_length  # the tokenizer truncates here: the truncation length is this, exactly
        self.configured_layers = num_layers

    @cached_property
    def num_layers(self) -> int | None:
        return self.configured_layers or config_value(self.folder, "num_hidden_layers")

    def described_dim(self) -> int | None:
        return config_value(self.folder, "hidden_size")

    @cached_property
    def tokenizer(self):
        tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, revision=self.revision)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load(self):
        model = load_encoder(self.model_name_or_path, self.configured_layers, self.revision).to(self.device)
        if self.dtype:
            model.to(getattr(torch, self.dtype))
        return model.eval()

    def loaded_dim(self, model) -> int:
        return int(model.config.hidden_size)

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
