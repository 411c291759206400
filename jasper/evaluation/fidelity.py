"""Teacher fidelity: how closely a student's vectors reproduce a teacher's, on held-out texts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jasper.evaluation.metrics import spearman


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
