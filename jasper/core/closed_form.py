"""Stage 1 in closed form: FC1 as the ridge regression from pooled encoder states to the teacher vectors.

Stage 1 trains only FC1, a linear map on the frozen encoder's pooled states, so its least-squares optimum for the
point-to-point objective has a closed form: seconds instead of thousands of steps. The three Jasper losses are not
least squares, so gradient steps may still polish the result (``stages.stage1.steps``); the ablation in
experiments/recipe_ablations.md measures both.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_rows_finite(matrix: Tensor, what: str) -> None:
    """Refuse NaN/inf, naming the first offending rows (a corrupt cache or a diverged encoder, never to be fitted)."""
    bad = (~torch.isfinite(matrix)).any(dim=-1).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"{what} has NaN/inf in {len(bad)} row(s), first rows {bad[:10].tolist()}: rebuild the cache "
            "(python precompute.py verify=all names damaged shards) or drop those texts"
        )


def ridge_fc1(features: Tensor, targets: Tensor, ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``(weight (D, H), bias (D,))`` minimising ``||X W^T + b - T||^2 + ridge * N * ||W||^2`` (bias unpenalised).

    ``features``: pooled states ``(N, H)``; ``targets``: teacher vectors ``(N, D)``. Solved in float64 on the
    centred data (the bias is then the mean residual), so it equals ``torch.linalg.lstsq`` at ``ridge=0``.
    ``ridge`` is relative to ``N`` so the same value suits any corpus size.

    >>> x = torch.randn(50, 4, dtype=torch.float64); w = torch.randn(3, 4, dtype=torch.float64)
    >>> weight, bias = ridge_fc1(x, x @ w.T + 1.0, ridge=0.0)
    >>> torch.allclose(weight, w.to(weight.dtype), atol=1e-6) and torch.allclose(bias, torch.ones(3), atol=1e-6)
    True
    """
    if features.ndim != 2 or targets.ndim != 2 or len(features) != len(targets):
        raise ValueError(
            f"closed-form FC1 needs features (N, H) and teacher vectors (N, D) with the same N, got "
            f"{tuple(features.shape)} and {tuple(targets.shape)}"
        )
    if ridge < 0:
        raise ValueError(f"stages.stage1.module.closed_form={ridge}: the ridge must be >= 0")
    check_rows_finite(features, "the pooled encoder features")
    check_rows_finite(targets, "the teacher vectors")
    x, t = features.double(), targets.double()
    x_mean, t_mean = x.mean(dim=0), t.mean(dim=0)
    xc, tc = x - x_mean, t - t_mean
    gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ tc).T  # (D, H)
    bias = t_mean - weight @ x_mean
    return weight.float(), bias.float()
