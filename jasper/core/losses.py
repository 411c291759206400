"""The three Jasper distillation losses and their weighted sum (the relative similarity loss, with its fast
kernel, lives in :mod:`jasper.core.resim`).

Every function takes L2-normalised student vectors ``(B, d_s)`` and teacher vectors ``(B, d_t)`` and returns a
scalar. Formulas follow "Jasper and Stella: distillation of SOTA embedding models" (arXiv 2412.19048), section 3.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jasper.core.distributed import all_gather_no_grad, all_gather_with_grad
from jasper.core.resim import (
    check_batch,
    relative_similarity_loss,
    teacher_pair_order,
)


def cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Point-to-point loss: ``mean_i (1 - s_i . t_i)``. Needs ``d_s == d_t``.

    >>> s = F.normalize(torch.randn(4, 8), dim=-1)
    >>> cosine_loss(s, s).abs() < 1e-6
    tensor(True)
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"cosine_loss needs student and teacher vectors of the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}; use it only on the head whose size is the teacher dimension (FC1)"
        )
    return (1.0 - (student * teacher).sum(dim=-1)).mean()


def similarity_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Pair-to-pair loss: ``MSE(S S^T, T T^T)`` over the ``B x B`` in-batch similarity matrices.

    Works for any student dimension.

    >>> s, t = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 16), dim=-1)
    >>> similarity_loss(s, t) >= 0
    tensor(True)
    """
    check_batch(student, teacher)
    return F.mse_loss(student @ student.T, teacher @ teacher.T)


# The three terms: their weights' names (loss=, stages.stageN.loss) and the short names they are logged under
# (train/fc1/loss_cos); everything else derives from this table.
TERMS = {"cosine": "cos", "similarity": "sim", "relative_similarity": "resim"}
SETTINGS = (*TERMS, "margin")  # what loss= and stages.stageN.loss set besides gather_across_ranks


class DistillLoss(nn.Module):
    """``L = cosine * L_cos + similarity * L_sim + relative_similarity * L_resim`` (paper: 10, 200, 20).

    ``forward`` returns every term by its log name (:data:`TERMS`: ``cos``, ``sim``, ``resim``) and their weighted sum
    (``total``), so that each can be logged. ``use_cosine=False`` leaves the cosine term out (reduced heads, whose dimension is not
    the teacher's).

    Several heads against one teacher: the teacher's pair order (:func:`teacher_pair_order`, a sort of
    ``B(B-1)/2`` values) is cached for the last teacher tensor seen, so calling ``forward`` once per head with the
    same ``teacher`` object sorts once per batch. The cache is keyed on the tensor's identity and version counter,
    so a new batch or an in-place change recomputes it.

    ``gather_across_ranks=True`` (config ``loss.gather_across_ranks``): under data parallelism (``torch.distributed``
    initialised, world size > 1) the similarity and relative-similarity terms see the global batch, all-gathered
    from every rank with gradients flowing back to each rank's own rows (:mod:`jasper.core.distributed`); the cosine term
    stays local. Each rank's ``sim``/``resim`` is then the global-batch loss, and after DDP averages gradients the
    update equals one process on the global batch (see :mod:`jasper.core.distributed` for the convention).
    """

    def __init__(
        self,
        cosine: float = 10.0,
        similarity: float = 200.0,
        relative_similarity: float = 20.0,
        margin: float = 0.015,
        gather_across_ranks: bool = False,
    ) -> None:
        super().__init__()
        self.weights = {
            "cosine": cosine,
            "similarity": similarity,
            "relative_similarity": relative_similarity,
        }
        for name, value in self.weights.items():
            if value < 0:
                raise ValueError(f"loss weight loss.{name}={value} is negative; weights must be >= 0")
        if margin < 0:
            raise ValueError(f"loss.margin={margin} is negative; the paper uses 0.015")
        if similarity == 0 and relative_similarity == 0 and cosine == 0:
            raise ValueError(
                "all loss weights are 0: set at least one of loss.cosine, loss.similarity, "
                "loss.relative_similarity (paper: 10, 200, 20)"
            )
        self.margin = margin
        self.gather_across_ranks = gather_across_ranks
        self._teacher_cache: tuple[weakref.ref, int, Tensor, Tensor | None] | None = None

    def forward(self, student: Tensor, teacher: Tensor, use_cosine: bool = True) -> dict[str, Tensor]:
        check_batch(student, teacher)
        # bf16 inputs: the losses are differences of near-equal numbers, so compute them in float32.
        student = student.float() if student.dtype != torch.float64 else student
        global_teacher, order = self._teacher(teacher, student.dtype)
        terms: dict[str, Tensor] = {}
        weights = self.weights
        if use_cosine and weights["cosine"] > 0:
            terms["cosine"] = cosine_loss(student, teacher.to(student.dtype))
        if weights["similarity"] > 0 or weights["relative_similarity"] > 0:
            global_student = all_gather_with_grad(student) if self.gather_across_ranks else student
            if weights["similarity"] > 0:
                terms["similarity"] = similarity_loss(global_student, global_teacher)
            if weights["relative_similarity"] > 0:
                terms["relative_similarity"] = relative_similarity_loss(
                    global_student, global_teacher, self.margin, teacher_order=order
                )
        total = sum(weights[name] * value for name, value in terms.items())
        return {**{TERMS[name]: value for name, value in terms.items()}, "total": total}

    def _teacher(self, teacher: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The (gathered, cast) teacher and its pair order, cached for the last teacher tensor seen."""
        cache = self._teacher_cache
        if cache is not None and cache[0]() is teacher and cache[1] == teacher._version:
            global_teacher, order = cache[2], cache[3]
            if global_teacher.dtype == dtype:
                return global_teacher, order
        global_teacher = teacher.detach().to(dtype)
        if self.gather_across_ranks:
            global_teacher = all_gather_no_grad(global_teacher)
        order = (
            teacher_pair_order(global_teacher)
            if self.weights["relative_similarity"] > 0 and len(teacher) > 0
            else None
        )
        self._teacher_cache = (weakref.ref(teacher), teacher._version, global_teacher, order)
        return global_teacher, order
