"""What every lazy teacher shares: the ``Teacher`` protocol, the query/document roles and their prompts, and
``LazyTeacher``, a description that loads its model on first use (:mod:`jasper.models.teachers` has the kinds)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from jasper.models.encoders import check_model_path
from jasper.models.model_files import folder_digest, hub_commit, hub_listing, local_folder

log = logging.getLogger(__name__)
# What a text is to a teacher: a query (gets the model card's instruction) or a document (usually none). Training
# texts are unlabeled, so the paper's recipe encodes them as documents (teachers.role, docs/teachers.md).
ROLES = ("query", "document")


class Teacher(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        """L2-normalised float32 vectors ``(N, dim)`` on the CPU, rows in the order of ``texts``."""
        ...


def device_or_default(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class LazyTeacher:
    """What the teacher kinds share: a description that loads its model on first use.

    ``prompts`` gives the prompt of each role (``query``, ``document``; ``prompt``: the one for a role ``prompts``
    does not name) and ``role`` the one in use (set for all teachers by ``teachers.role``); both are in the cache key.

    ``dim`` is known without loading. The cheapest correct source is the model's own small files, read as its
    library would read them (``config.json``'s hidden size; for sentence-transformers, ``modules.json`` and the
    Pooling / Dense configs): they are on disk whenever the model is, they cost a few kB, and they do not depend
    on a cache having been built (the cache manifest would, and would leave the first run to load the model
    anyway). Where the files do not tell (a custom-code module), ``dim`` in the config gives it; failing both, the
    model is loaded once to ask it. A configured ``dim`` that the files contradict stops the run before anything
    loads; whatever the source, the loaded model's dimension is checked against it.

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
        prompts: Mapping[str, str] | None = None,
        role: str = "document",
    ) -> None:
        check_model_path(model_name_or_path)
        self.model_name_or_path = str(model_name_or_path)
        self.name = name or self.model_name_or_path
        self.prompts = role_prompts(prompt, prompts)
        self.role = role
        self.revision = revision
        self.device = device_or_default(device)
        self.dtype = dtype
        self.configured_dim = dim
        self._model = None

    # The description: read from files, never from a loaded model.
    @property
    def role(self) -> str:
        """``query`` or ``document``: which of ``prompts`` this teacher's texts get; part of the cache key."""
        return self._role

    @role.setter
    def role(self, role: str) -> None:
        self._role = check_role(role, f"teacher {self.name}")

    @property
    def prompt(self) -> str:
        """The prompt of the current role (what the cache key records with the role)."""
        return self.prompts[self.role]

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
        described = self.described_dim()
        if self.configured_dim and described and described != self.configured_dim:
            raise ValueError(
                f"teacher {self.name}: its config gives dim: {self.configured_dim} but its files give a "
                f"{described}-d output{self.dim_source()}; set dim: {described} in its teachers config, or select "
                "the output you meant"
            )
        dim = self.configured_dim or described
        if dim is None:
            log.info("teacher %s: output dimension not in its files; loading the model to read it", self.name)
            dim = self.loaded_dim(self.model)
        return int(dim)

    def described_dim(self) -> int | None:
        raise NotImplementedError

    def dim_source(self) -> str:
        """Where the files' dimension comes from, for an error message (a selected head says which)."""
        return ""

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


def check_role(role: str, who: str) -> str:
    if role not in ROLES:
        raise ValueError(f"{who}: role {role!r} is not one of {ROLES} (teachers.role in the teachers config)")
    return role


def role_prompts(prompt: str, prompts: Mapping[str, str] | None) -> dict[str, str]:
    """Each role's prompt: what ``prompts`` gives for it, else ``prompt`` (one prompt for both roles).

    >>> role_prompts("", {"query": "Query: "})
    {'query': 'Query: ', 'document': ''}
    """
    given = dict(prompts or {})
    unknown = sorted(set(given) - set(ROLES))
    if unknown:
        raise ValueError(f"teacher prompts name {unknown}: give a prompt for each of {ROLES}")
    return {role: str(given.get(role, prompt)) for role in ROLES}
