"""The fast relative-similarity loss against the plain O(B^4) reference: value and gradient, ties, boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import jasper.core.resim as resim
from jasper.core.resim import (
    relative_similarity_loss,
    relative_similarity_loss_reference,
    teacher_pair_order,
)


def active_partner_counts(u: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``u`` in teacher order, each element's active hinge counts ``(low, high)`` in ``u``'s order, int64.

    ``low[k] = #{j > k: relu(u_k - u_j + margin) > 0}``, ``high[k] = #{i < k: relu(u_i - u_k + margin) > 0}``.
    A view of :func:`jasper.core.resim._ranked_active_counts` (which the loss uses directly, in rank order).
    """
    _, low, high, by_rank = resim._ranked_active_counts(u, margin)
    low_out, high_out = (torch.empty(len(u), dtype=torch.long, device=u.device) for _ in range(2))
    return low_out.index_copy_(0, by_rank, low.long()), high_out.index_copy_(0, by_rank, high.long())


def _vectors(kind: str, b: int, d: int, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Test inputs. "dyadic": entries in {-2, ..., 2} / 4, so every pair similarity is exact and many collide
    (exact teacher ties; for the student, hinges that land exactly on 0). "dup": normalised rows, half repeated."""
    if kind == "dyadic":
        return (torch.randint(-2, 3, (b, d), generator=g) / 4).to(dtype)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    if kind == "dup":
        x[b // 2 :] = x[: b - b // 2].clone()
    return x


def _compare(student, teacher, margin, value_rtol, grad_rtol, grad_atol):
    student = student.clone().requires_grad_()
    reference = relative_similarity_loss_reference(student, teacher, margin)
    (reference_grad,) = torch.autograd.grad(reference, student)
    fast = relative_similarity_loss(student, teacher, margin)
    (fast_grad,) = torch.autograd.grad(fast, student)
    assert fast.dtype == reference.dtype
    torch.testing.assert_close(fast, reference, rtol=value_rtol, atol=1e-12)
    torch.testing.assert_close(fast_grad, reference_grad, rtol=grad_rtol, atol=grad_atol)


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(2, 9),
    d_s=st.sampled_from([2, 3, 8]),
    d_t=st.sampled_from([2, 5, 16]),
    student_kind=st.sampled_from(["normal", "dup", "dyadic"]),
    teacher_kind=st.sampled_from(["normal", "dup", "dyadic"]),
    margin=st.sampled_from([0.0, 0.015, 0.25, 0.5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_float64(b, d_s, d_t, student_kind, teacher_kind, margin, seed):
    g = torch.Generator().manual_seed(seed)
    student = _vectors(student_kind, b, d_s, g, torch.float64)
    teacher = _vectors(teacher_kind, b, d_t, g, torch.float64)
    _compare(student, teacher, margin, value_rtol=1e-6, grad_rtol=1e-5, grad_atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(3, 9),
    teacher_kind=st.sampled_from(["normal", "dup", "dyadic"]),
    margin=st.sampled_from([0.0, 0.015, 0.25]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_float32(b, teacher_kind, margin, seed):
    g = torch.Generator().manual_seed(seed)
    student = _vectors("normal", b, 6, g, torch.float32)
    teacher = _vectors(teacher_kind, b, 10, g, torch.float32)
    _compare(student, teacher, margin, value_rtol=1e-5, grad_rtol=1e-5, grad_atol=1e-7)


@pytest.mark.parametrize("b", [32, 64])
@pytest.mark.parametrize("teacher_kind", ["normal", "dup", "dyadic"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference_larger_batches(b, teacher_kind, dtype):
    g = torch.Generator().manual_seed(b)
    student = _vectors("normal", b, 24, g, dtype)
    teacher = _vectors(teacher_kind, b, 40, g, dtype)
    tol = {torch.float64: (1e-6, 1e-5, 1e-12), torch.float32: (1e-5, 1e-5, 1e-7)}[dtype]
    _compare(student, teacher, 0.015, *tol)


# float64 with tied teacher similarities ("dup") is covered at b=32 and 64; at 128 the reference takes 11 s more.
@pytest.mark.parametrize(
    "teacher_kind, dtype", [("normal", torch.float64), ("normal", torch.float32), ("dup", torch.float32)]
)
def test_matches_reference_b128(teacher_kind, dtype):
    g = torch.Generator().manual_seed(128)
    student = _vectors("normal", 128, 384 // 8, g, dtype)
    teacher = _vectors(teacher_kind, 128, 1024 // 8, g, dtype)
    tol = {torch.float64: (1e-6, 1e-5, 1e-12), torch.float32: (1e-5, 1e-5, 1e-7)}[dtype]
    _compare(student, teacher, 0.015, *tol)


def test_hinges_exactly_at_zero_are_inactive():
    # Dyadic student and margin: many s_low - s_high + margin are exactly 0, where relu gives 0 and relu' = 0.
    g = torch.Generator().manual_seed(5)
    student = _vectors("dyadic", 12, 3, g, torch.float64)
    teacher = _vectors("normal", 12, 7, g, torch.float64)
    s = resim.pair_similarities(student)
    assert ((s.unsqueeze(0) - s.unsqueeze(1) + 0.25) == 0).any()
    _compare(student, teacher, 0.25, value_rtol=1e-6, grad_rtol=1e-5, grad_atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [0.0, 0.015, 0.3])
def test_exact_hinge_boundaries(dtype, margin):
    # Values near 0 (where float spacing is finer than the rounding of low - high), near +-margin, exactly
    # margin apart (hinges landing on 0), and repeated: the rank thresholds must follow the float predicate.
    g = torch.Generator().manual_seed(4)
    u = torch.cat(
        [
            torch.rand(2000, generator=g, dtype=dtype) * 2 - 1,
            torch.randn(500, generator=g, dtype=dtype) * 1e-7,
            torch.tensor([0.0, -0.0, margin, -margin, 1.0, -1.0, margin / 2, 2 * margin], dtype=dtype),
            torch.rand(500, generator=g, dtype=dtype) * 1e-4 - margin,
            torch.rand(500, generator=g, dtype=dtype) * 1e-4 + margin,
            (torch.randint(-8, 9, (300,), generator=g) / 16).to(dtype),
        ]
    )
    u = torch.sort(u).values
    qa, qb = resim._hinge_rank_thresholds(u, margin)
    active = u.unsqueeze(1) - u.unsqueeze(0) + margin > 0  # [x, v]: relu(x - v + margin) > 0
    assert torch.equal(qa.long(), active.sum(1))  # partners v with x below them active
    assert torch.equal(qb.long(), (~active).sum(0))  # partners v with x above them inactive


def test_counts_match_brute_force():
    g = torch.Generator().manual_seed(6)
    u = (torch.randint(-8, 9, (300,), generator=g) / 16).double()  # many equal values and exact boundaries
    for margin in (0.0, 0.0625, 0.3):
        low, high = active_partner_counts(u, margin)
        active = (u.unsqueeze(1) - u.unsqueeze(0) + margin > 0).triu(diagonal=1)  # [i, j]: i before j
        assert torch.equal(low, active.sum(1))
        assert torch.equal(high, active.sum(0))


def test_teacher_order_reuse_across_heads():
    g = torch.Generator().manual_seed(7)
    teacher = F.normalize(torch.randn(20, 32, generator=g), dim=-1)
    student = F.normalize(torch.randn(20, 32, generator=g), dim=-1)
    order = teacher_pair_order(teacher)
    for dim in (32, 16, 8):
        head = F.normalize(student[:, :dim], dim=-1)
        assert relative_similarity_loss(head, teacher, teacher_order=order) == relative_similarity_loss(
            head, teacher
        )


def test_teacher_order_tie_rule():
    # All teacher pair similarities tie: index order kept, so the later pair is ranked above.
    assert torch.equal(teacher_pair_order(torch.eye(4)), torch.arange(6))
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # pair sims [0, 1, 0]
    assert torch.equal(teacher_pair_order(t), torch.tensor([0, 2, 1]))


def test_no_gradient_to_teacher():
    g = torch.Generator().manual_seed(8)
    student = F.normalize(torch.randn(10, 4, generator=g), dim=-1).requires_grad_()
    teacher = F.normalize(torch.randn(10, 6, generator=g), dim=-1).requires_grad_()
    relative_similarity_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_bf16_inputs_computed_in_float32():
    g = torch.Generator().manual_seed(9)
    student = F.normalize(torch.randn(16, 8, generator=g), dim=-1).bfloat16().requires_grad_()
    teacher = F.normalize(torch.randn(16, 12, generator=g), dim=-1).bfloat16()
    value = relative_similarity_loss(student, teacher)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, relative_similarity_loss_reference(student.float(), teacher.float()))
    value.backward()
    assert student.grad.dtype == torch.bfloat16


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, tuple | list) else [out]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_never_materialises_m_by_m():
    b = 64
    m = b * (b - 1) // 2
    g = torch.Generator().manual_seed(10)
    student = F.normalize(torch.randn(b, 8, generator=g), dim=-1).requires_grad_()
    teacher = F.normalize(torch.randn(b, 8, generator=g), dim=-1)
    with _LargestTensor() as probe:
        relative_similarity_loss(student, teacher).backward()
    assert probe.largest <= max(b * b, 2 * (m + 1))  # S S^T, or the O(M) query arrays; M^2 would be ~4e6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    g = torch.Generator().manual_seed(11)
    student = F.normalize(torch.randn(48, 16, generator=g), dim=-1).to(dtype)
    teacher = F.normalize(torch.randn(48, 24, generator=g), dim=-1).to(dtype)
    cpu = relative_similarity_loss(student, teacher)
    cuda = relative_similarity_loss(student.cuda(), teacher.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-7)
    if dtype != torch.bfloat16:
        _compare(student.cuda(), teacher.cuda(), 0.015, value_rtol=1e-5, grad_rtol=1e-5, grad_atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sort_key_orders_like_the_floats(dtype):
    g = torch.Generator().manual_seed(12)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, -1e-45, 1.0, -1.0], dtype=dtype)
    x = torch.cat(
        [torch.randn(3000, generator=g, dtype=dtype), specials, _vectors("dyadic", 40, 8, g, dtype)[0]]
    )
    key = resim._sort_key(x)
    assert torch.equal(torch.sort(key, stable=True).indices, torch.sort(x, stable=True).indices)
    assert torch.equal(
        key.unsqueeze(0) == key.unsqueeze(1), x.unsqueeze(0) == x.unsqueeze(1)
    )  # -0.0 ties 0.0
    assert torch.equal(resim._from_sort_key(key, dtype), x + 0.0)
