"""Metrics that training and evaluation share, on plain tensors and arrays: rank correlation, teacher fidelity
(how closely a student's vectors reproduce a teacher's) and image<->caption recall.

They sit below the models and the stages (a stage logs them on its validation set); :mod:`jasper.evaluation`
uses them too, and adds the retrieval metrics that only evaluation needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

KS = (1, 5, 10)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: the Pearson correlation of the average ranks (ties share their mean rank).

        rho = cov(R(x), R(y)) / (std(R(x)) * std(R(y)))

    Computed by `scipy.stats.spearmanr`; this wrapper adds the checks. Returns NaN when either input is constant
    (the correlation is undefined), without scipy's ConstantInputWarning. Raises on mismatched lengths, fewer
    than 2 values or non-finite values.

    Example: spearman([1, 2, 3], [1, 3, 2]) -> 0.5
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"spearman: x and y differ in length ({xa.size} vs {ya.size})")
    if xa.size < 2:
        raise ValueError(f"spearman: needs at least 2 values, got {xa.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("spearman: inputs contain NaN or infinite values")
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(xa, ya).statistic)


def _strict_upper(m: torch.Tensor) -> torch.Tensor:
    """(B, B) -> (B(B-1)/2,) entries above the diagonal."""
    rows, cols = torch.triu_indices(m.shape[0], m.shape[1], offset=1)
    return m[rows, cols]


def teacher_fidelity(
    student_vectors: torch.Tensor, teacher_vectors: torch.Tensor, batch_size: int = 64
) -> dict[str, float | None]:
    """Agreement of student and teacher vectors of the same N held-out texts (rows aligned).

        cosine   = mean_i s_i . t_i                      (only when dims are equal, else None; the L_cos target)
        spearman = mean over consecutive batches b of Spearman(triu(S_b S_b^T), triu(T_b T_b^T))
                   (strict upper triangles: the pair similarities L_sim and L_resim train on)

    Rows are L2-normalised first. Batches are rows [0, B), [B, 2B), ...; a last batch of fewer than 3 rows is
    dropped (2 rows give a single pair, whose rank correlation is undefined).
    Example: teacher_fidelity(student.encode(held_out), teacher.encode(held_out))
    """
    if student_vectors.ndim != 2 or teacher_vectors.ndim != 2:
        raise ValueError("teacher_fidelity: expected 2-D (N, d) tensors")
    n = student_vectors.shape[0]
    if teacher_vectors.shape[0] != n:
        raise ValueError(f"teacher_fidelity: {n} student rows vs {teacher_vectors.shape[0]} teacher rows")
    if batch_size < 3 or n < 3:
        raise ValueError(f"teacher_fidelity: need batch_size >= 3 and >= 3 rows (got {batch_size}, {n})")
    s = F.normalize(student_vectors.detach().double().cpu(), dim=-1)
    t = F.normalize(teacher_vectors.detach().double().cpu(), dim=-1)
    cosine = float((s * t).sum(-1).mean()) if s.shape[1] == t.shape[1] else None
    rhos = []
    for start in range(0, n, batch_size):
        sb, tb = s[start : start + batch_size], t[start : start + batch_size]
        if sb.shape[0] < 3:
            break
        rhos.append(spearman(_strict_upper(sb @ sb.T).numpy(), _strict_upper(tb @ tb.T).numpy()))
    return {"cosine": cosine, "spearman": sum(rhos) / len(rhos)}


def pair_recall_at_k(similarity: Tensor, ks: Sequence[int] = KS) -> dict[int, float]:
    """``similarity[i, j]`` of query ``i`` and candidate ``j``; the right candidate of query ``i`` is ``j = i``."""
    n = similarity.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(f"expected a square similarity matrix, got {tuple(similarity.shape)}")
    right = similarity.diagonal().unsqueeze(1)
    rank = (similarity > right).sum(dim=1)  # candidates scored strictly above the right one (ties favour it)
    return {k: float((rank < k).float().mean()) for k in ks}


def pair_recall(image_vecs: Tensor, caption_vecs: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """``image->caption R@k`` and ``caption->image R@k`` for aligned ``(N, d)`` vectors."""
    similarity = image_vecs.float() @ caption_vecs.float().T
    i2t = pair_recall_at_k(similarity, ks)
    t2i = pair_recall_at_k(similarity.T, ks)
    return {
        **{f"image->caption R@{k}": v for k, v in i2t.items()},
        **{f"caption->image R@{k}": v for k, v in t2i.items()},
    }
