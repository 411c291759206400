"""The teachers' target: every teacher's vectors normalised, weighted, concatenated and normalised again, whether they
are encoded now (:class:`TeacherEnsemble`) or read from the teacher cache (:func:`ensemble_vectors`, the one formula)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from jasper.models.encoders import check_finite, encode_all
from jasper.models.teacher_base import Teacher, check_role


class TeacherEnsemble:
    """Normalise each teacher's vectors, scale it by its weight, concatenate, normalise the concatenation.

    ``weights`` (one per teacher, default all 1: the paper's target) sets each teacher's share of the target:
    teacher k holds w_k^2 / sum(w^2) of its squared norm, and a student whose slices have those norms has a cosine
    to the target equal to the sum of its per-teacher cosines with those shares. Weights 2 and 1 make the first
    teacher four times as loud as the second in the cosine term and in the similarity terms' target.

    ``role`` (``query`` / ``document``; None: each teacher keeps its own) is what the training texts are to every
    teacher: it picks each one's prompt and is part of its cache key. ``target_dim``: the size the config expects;
    the teachers' (read from their configs and files, nothing loaded) must add up to it, or the run stops here.
    """

    def __init__(
        self,
        teachers: Sequence[Teacher],
        batch_size: int = 32,
        online: bool = False,
        weights: Sequence[float] | None = None,
        role: str | None = None,
        target_dim: int | None = None,
    ) -> None:
        if not teachers:
            raise ValueError("no teachers configured: add at least one under teachers.teachers")
        self.teachers = list(teachers)
        self.batch_size = batch_size
        self.online = online  # True: encode in memory at setup, never read or write the TeacherCache
        self.weights = check_weights(weights, self.names)
        if role is not None:
            for teacher in self.teachers:
                teacher.role = check_role(role, "teachers")
        self.target_dim = target_dim
        # Only when checked: a dim is read from files (or, when they do not tell, from the loaded model).
        if target_dim is not None:
            check_target_dim([(t.name, t.dim) for t in self.teachers], target_dim, "the teachers")

    @property
    def dim(self) -> int:
        return sum(t.dim for t in self.teachers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def encode(self, texts: Sequence[str], show_progress: bool = True) -> Tensor:
        """``(N, sum of teacher dims)`` float32 vectors; raises on NaN/inf so bad vectors never reach training."""
        parts = []
        for teacher in self.teachers:
            with tqdm(
                total=len(texts), desc=f"teacher {teacher.name}", unit="text", disable=not show_progress
            ) as bar:
                part = encode_all(teacher, texts, self.batch_size, bar)
            check_finite(part, teacher.name)
            parts.append(part.float().cpu().numpy())
        return torch.from_numpy(ensemble_vectors(parts, self.weights))


def unit_rows(array: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (as ``F.normalize``: eps 1e-12)."""
    return array / np.maximum(np.sqrt(np.einsum("ij,ij->i", array, array)), 1e-12)[:, None]


def ensemble_vectors(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The teachers' target, the one formula for vectors encoded now (:class:`TeacherEnsemble`) and read from the
    cache (:class:`jasper.storage.cache.CacheReader`): each teacher's ``(N, d_k)`` rows normalised and scaled by its
    weight, concatenated, normalised again. One teacher: its unit rows (a single weight changes nothing).

    >>> a, b = np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]])
    >>> ensemble_vectors([a, b], [1.0, 1.0]).round(4).tolist()
    [[0.4243, 0.5657, 0.0, 0.7071]]
    """
    units = [unit_rows(part) for part in parts]
    if len(units) == 1:
        return units[0]
    return unit_rows(np.concatenate([w * u for w, u in zip(weights, units, strict=True)], axis=-1))


def check_weights(weights: Sequence[float] | None, names: Sequence[str]) -> list[float]:
    """One finite positive weight per teacher (all 1 when None); an error naming the teachers otherwise."""
    if weights is None:
        return [1.0] * len(names)
    weights = [float(w) for w in weights]
    if len(weights) != len(names):
        raise ValueError(
            f"teachers.weights has {len(weights)} value(s) for {len(names)} teacher(s) {list(names)}: give one "
            "weight per teacher, in the same order (or null for equal weights)"
        )
    bad = [f"{n}={w}" for n, w in zip(names, weights, strict=True) if not math.isfinite(w) or w <= 0]
    if bad:
        raise ValueError(f"teachers.weights must be finite and > 0: {', '.join(bad)}")
    return weights


def check_target_dim(
    dims: Sequence[tuple[str, int]], target_dim: int | None, source: str, fix: str | None = None
) -> None:
    """Stop when the teachers' ``(name, dim)`` do not add up to ``target_dim`` (None: no check), naming each size
    and the keys to change. ``source`` says whose sizes they are (the teachers, or a cache's manifests); ``fix``
    replaces the advice to change the teachers config (a cache built for other teachers is deleted instead)."""
    total = sum(int(dim) for _, dim in dims)
    if target_dim is None or total == int(target_dim):
        return
    sizes = ", ".join(f"{name}: {dim}" for name, dim in dims)
    fix = fix or (
        "select each teacher's output in the teachers config (its dim, and dense_folder for a sentence-transformers "
        "model with several Dense heads, such as stella's 2_Dense_8192)"
    )
    raise ValueError(
        f"{source} give a {total}-d target ({sizes}) but teachers.target_dim is {target_dim}: {fix}; or, if "
        f"{total} is what you mean, set teachers.target_dim={total}"
    )
