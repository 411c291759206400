"""The three Jasper distillation losses and their weighted sum.

Every function takes L2-normalised student vectors ``(B, d_s)`` and teacher vectors ``(B, d_t)`` and returns a
scalar. Formulas follow "Jasper and Stella: distillation of SOTA embedding models" (arXiv 2412.19048), section 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    _check_batch(student, teacher)
    return F.mse_loss(student @ student.T, teacher @ teacher.T)


def pair_similarities(vectors: Tensor) -> Tensor:
    """The strict upper triangle of ``V V^T`` as a vector of length ``M = B(B-1)/2``: ``(B, d) -> (M,)``."""
    rows, cols = torch.triu_indices(len(vectors), len(vectors), offset=1, device=vectors.device)
    return (vectors @ vectors.T)[rows, cols]


def relative_similarity_loss_reference(student: Tensor, teacher: Tensor, margin: float = 0.015) -> Tensor:
    """Ranking loss over every two in-batch text pairs, written plainly (O(B^4) memory).

    With ``s, t`` the pair similarities (:func:`pair_similarities`) of student and teacher, over all index pairs
    ``p < q`` of the ``M`` text pairs::

        term(p, q) = relu(s_q - s_p + margin)   if t_q <  t_p   (the teacher ranks pair p above pair q)
                     relu(s_p - s_q + margin)   otherwise       (ties included)

    and the loss is the sum of terms divided by ``M(M-1)/2``. Zero when ``B < 3`` (fewer than two pairs).
    Kept as the definition the fast path is tested against.

    >>> v = F.normalize(torch.randn(5, 8), dim=-1)
    >>> relative_similarity_loss_reference(v, v, margin=0.0)  # a student that equals its teacher
    tensor(0.)
    """
    _check_batch(student, teacher)
    s, t = pair_similarities(student), pair_similarities(teacher)
    m = len(s)
    if m < 2:
        return student.sum() * 0.0
    teacher_prefers_p = t.unsqueeze(0) < t.unsqueeze(1)  # [p, q]: t_q < t_p
    s_p, s_q = s.unsqueeze(1), s.unsqueeze(0)
    terms = torch.where(teacher_prefers_p, F.relu(s_q - s_p + margin), F.relu(s_p - s_q + margin))
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=s.device), diagonal=1)
    return terms[upper].sum() / (m * (m - 1) / 2)


def relative_similarity_loss(student: Tensor, teacher: Tensor, margin: float = 0.015) -> Tensor:
    """Relative similarity loss as used in training; same value and gradient as the reference."""
    return relative_similarity_loss_reference(student, teacher, margin)


class DistillLoss(nn.Module):
    """``L = cosine * L_cos + similarity * L_sim + relative_similarity * L_resim`` (paper: 10, 200, 20).

    ``forward`` returns every term by name (``cos``, ``sim``, ``resim``) and their weighted sum (``total``), so
    that each can be logged. ``use_cosine=False`` leaves the cosine term out (reduced heads, whose dimension is not
    the teacher's).
    """

    def __init__(
        self,
        cosine: float = 10.0,
        similarity: float = 200.0,
        relative_similarity: float = 20.0,
        margin: float = 0.015,
    ) -> None:
        super().__init__()
        for name, value in [("cosine", cosine), ("similarity", similarity), ("relative_similarity", relative_similarity)]:
            if value < 0:
                raise ValueError(f"loss weight loss.{name}={value} is negative; weights must be >= 0")
        if margin < 0:
            raise ValueError(f"loss.margin={margin} is negative; the paper uses 0.015")
        if similarity == 0 and relative_similarity == 0 and cosine == 0:
            raise ValueError("all loss weights are 0: set at least one of loss.cosine, loss.similarity, "
                             "loss.relative_similarity (paper: 10, 200, 20)")
        self.weights = {"cos": cosine, "sim": similarity, "resim": relative_similarity}
        self.margin = margin

    def forward(self, student: Tensor, teacher: Tensor, use_cosine: bool = True) -> dict[str, Tensor]:
        # bf16 inputs: the losses are differences of near-equal numbers, so compute them in float32.
        student, teacher = student.float(), teacher.float()
        terms: dict[str, Tensor] = {}
        if use_cosine and self.weights["cos"] > 0:
            terms["cos"] = cosine_loss(student, teacher)
        if self.weights["sim"] > 0:
            terms["sim"] = similarity_loss(student, teacher)
        if self.weights["resim"] > 0:
            terms["resim"] = relative_similarity_loss(student, teacher, self.margin)
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms


def _check_batch(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 2 or teacher.ndim != 2 or len(student) != len(teacher):
        raise ValueError(
            f"student and teacher must be (B, d) matrices with the same B, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}: every text needs exactly one teacher vector"
        )
