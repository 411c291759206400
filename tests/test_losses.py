"""Hand-computed cases and properties of the three losses, and DistillLoss's terms, weights and validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import jasper.core.losses as losses
from jasper.core.losses import DistillLoss, cosine_loss, similarity_loss
from jasper.core.resim import relative_similarity_loss, relative_similarity_loss_reference

# A worked example, B = 3. Student rows x0 = (1, 0, 0), x1 = (0, 1, 0), x2 = (0.6, 0.8, 0); teacher rows
# y0 = (1, 0, 0), y1 = (0, 1, 0), y2 = (0.8, 0.6, 0). Pairs in order (0,1), (0,2), (1,2):
#   student pair similarities s = [0, 0.6, 0.8], teacher t = [0, 0.8, 0.6].
STUDENT = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64)
TEACHER = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.6, 0.0]], dtype=torch.float64)


def test_cosine_loss_by_hand():
    # Row dot products 1, 1, 0.6*0.8 + 0.8*0.6 = 0.96 -> mean(1 - dot) = 0.04 / 3.
    assert cosine_loss(STUDENT, TEACHER).item() == pytest.approx(0.04 / 3, rel=1e-12)


def test_similarity_loss_by_hand():
    # S S^T - T T^T is zero but for entries (0,2), (2,0): 0.6 - 0.8 and (1,2), (2,1): 0.8 - 0.6.
    # MSE over the 9 entries: 4 * 0.2^2 / 9.
    assert similarity_loss(STUDENT, TEACHER).item() == pytest.approx(0.16 / 9, rel=1e-12)


@pytest.mark.parametrize("loss", [relative_similarity_loss_reference, relative_similarity_loss])
def test_relative_similarity_by_hand(loss):
    # M = 3 pairs, M(M-1)/2 = 3 terms:
    #   (p=0, q=1): t_1 = 0.8 not < t_0 = 0 -> relu(s_0 - s_1 + m) = relu(0 - 0.6 + 0.015) = 0
    #   (p=0, q=2): t_2 = 0.6 not < t_0     -> relu(s_0 - s_2 + m) = relu(-0.8 + 0.015)    = 0
    #   (p=1, q=2): t_2 = 0.6 < t_1 = 0.8   -> relu(s_2 - s_1 + m) = 0.8 - 0.6 + 0.015 = 0.215
    # loss = 0.215 / 3; the active term is x1.x2 - x0.x2 + m, so the gradient is
    # d/dx0 = -x2 / 3, d/dx1 = x2 / 3, d/dx2 = (x1 - x0) / 3.
    student = STUDENT.clone().requires_grad_()
    value = loss(student, TEACHER, margin=0.015)
    value.backward()
    assert value.item() == pytest.approx(0.215 / 3, rel=1e-12)
    x0, x1, x2 = STUDENT
    torch.testing.assert_close(student.grad, torch.stack([-x2, x2, x1 - x0]) / 3)


@pytest.mark.parametrize("loss", [relative_similarity_loss_reference, relative_similarity_loss])
def test_relative_similarity_ties_by_hand(loss):
    # Teacher eye(3): every teacher pair similarity is 0, so every term takes the "otherwise" branch,
    # relu(s_p - s_q + m). Student with s = [0.8, 0.6, 0] (rows (0.6, 0.8), (0, 1), (1, 0)):
    #   relu(0.8 - 0.6 + m) + relu(0.8 - 0 + m) + relu(0.6 - 0 + m) = 0.215 + 0.815 + 0.615 = 1.645 -> / 3.
    student = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    teacher = torch.eye(3, dtype=torch.float64)
    assert loss(student, teacher, margin=0.015).item() == pytest.approx(1.645 / 3, rel=1e-12)
    # The same student reversed (s = [0, 0.6, 0.8]) agrees with the tie rule: every term is inactive.
    assert loss(student.flip(0), teacher, margin=0.015).item() == 0.0


@pytest.mark.parametrize("loss", [relative_similarity_loss_reference, relative_similarity_loss])
def test_relative_similarity_zero_when_order_matches_with_margin(loss):
    # s = [0, 0.6, 0.8] and a teacher ranking the pairs the same way: each gap (0.6, 0.2, 0.8) exceeds the margin.
    teacher = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.9, 0.0]], dtype=torch.float64
    )  # t = [0,.5,.9]
    assert loss(STUDENT, teacher, margin=0.015).item() == 0.0
    assert loss(STUDENT, teacher, margin=0.25).item() > 0.0  # the 0.2 gap no longer clears the margin


@pytest.mark.parametrize("loss", [relative_similarity_loss_reference, relative_similarity_loss])
def test_relative_similarity_zero_for_student_equal_teacher_without_margin(loss):
    v = F.normalize(
        torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    assert loss(v, v, margin=0.0).item() == 0.0


def test_cosine_and_similarity_zero_for_student_equal_teacher():
    v = F.normalize(torch.randn(7, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert cosine_loss(v, v).abs().item() < 1e-6
    assert similarity_loss(v, v).item() == 0.0


@pytest.mark.parametrize("batch", [0, 1, 2])
@pytest.mark.parametrize("loss", [relative_similarity_loss_reference, relative_similarity_loss])
def test_relative_similarity_small_batches_are_zero_with_a_graph(loss, batch):
    student = torch.randn(batch, 4, requires_grad=True)
    value = loss(student, torch.randn(batch, 6))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize("batch", [5, 16])
def test_gradients_match_finite_differences(batch):
    """Each loss's gradient (the fast resim kernel's own backward included) against central differences in
    float64; random points lie off the hinges' kinks, so the piecewise-linear resim is differentiable there."""
    g = torch.Generator().manual_seed(batch)
    student = F.normalize(torch.randn(batch, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    teacher = F.normalize(torch.randn(batch, 12, generator=g, dtype=torch.float64), dim=-1)
    for loss in (cosine_loss, similarity_loss, relative_similarity_loss, relative_similarity_loss_reference):
        if loss is cosine_loss:
            teacher_like = F.normalize(torch.randn(batch, 8, generator=g, dtype=torch.float64), dim=-1)
            assert torch.autograd.gradcheck(lambda s, t=teacher_like: cosine_loss(s, t), (student,)), loss
        else:
            assert torch.autograd.gradcheck(lambda s, f=loss: f(s, teacher), (student,), atol=1e-6), loss


def test_gradients_are_finite_on_tied_and_repeated_rows():
    """Every hinge at its kink: identical student rows tie every pair, a repeated teacher row ties its ranks."""
    teacher = F.normalize(torch.randn(8, 12, generator=torch.Generator().manual_seed(2)), dim=-1)
    teacher[4:] = teacher[0]
    for student in (torch.ones(8, 4) / 2, torch.cat([torch.eye(4), torch.eye(4)])):
        student.requires_grad_()
        for loss in (similarity_loss, relative_similarity_loss, relative_similarity_loss_reference):
            (grad,) = torch.autograd.grad(loss(student, teacher), student)
            assert torch.isfinite(grad).all(), loss
        fast = torch.autograd.grad(relative_similarity_loss(student, teacher), student)[0]
        reference = torch.autograd.grad(relative_similarity_loss_reference(student, teacher), student)[0]
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)  # the same subgradient at the kinks


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        cosine_loss(torch.randn(4, 8), torch.randn(4, 16))
    with pytest.raises(ValueError, match="same B"):
        similarity_loss(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="same B"):
        relative_similarity_loss(torch.randn(4, 8), torch.randn(4, 8, 2))
    with pytest.raises(ValueError, match="teacher_order"):
        relative_similarity_loss(torch.randn(4, 8), torch.randn(4, 8), teacher_order=torch.arange(3))
    nan = torch.full((4, 8), float("nan"), requires_grad=True)  # NaN in, NaN out, as the reference
    loss = relative_similarity_loss(nan, torch.randn(4, 8))
    assert loss.isnan() and relative_similarity_loss_reference(nan, torch.randn(4, 8)).isnan()
    loss.backward()
    assert nan.grad.isnan().all()


# DistillLoss ---------------------------------------------------------------------------------------------------


def _batch(b=6, d=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(
        torch.randn(b, d, generator=g), dim=-1
    )


def test_distill_loss_terms_and_weighted_total():
    student, teacher = _batch()
    terms = DistillLoss()(student, teacher)
    assert set(terms) == {"cos", "sim", "resim", "total"}
    assert terms["cos"] == cosine_loss(student, teacher)
    assert terms["sim"] == similarity_loss(student, teacher)
    assert terms["resim"] == relative_similarity_loss(student, teacher, 0.015)
    expected = 10 * terms["cos"] + 200 * terms["sim"] + 20 * terms["resim"]
    torch.testing.assert_close(terms["total"], expected)


def test_distill_loss_use_cosine_false_and_zero_weights_drop_terms():
    student, teacher = _batch()
    assert set(DistillLoss()(student[:, :4], teacher, use_cosine=False)) == {"sim", "resim", "total"}
    only_sim = DistillLoss(cosine=0.0, relative_similarity=0.0)(student, teacher)
    assert set(only_sim) == {"sim", "total"}
    torch.testing.assert_close(only_sim["total"], 200 * only_sim["sim"])


def test_distill_loss_margin_is_used():
    student, teacher = _batch()
    terms = DistillLoss(margin=0.1)(student, teacher)
    torch.testing.assert_close(terms["resim"], relative_similarity_loss_reference(student, teacher, 0.1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cosine": -1.0}, "loss.cosine=-1.0 is negative"),
        ({"similarity": -2.0}, "loss.similarity=-2.0 is negative"),
        ({"relative_similarity": -0.5}, "loss.relative_similarity=-0.5 is negative"),
        ({"margin": -0.1}, "loss.margin=-0.1 is negative"),
        ({"cosine": 0.0, "similarity": 0.0, "relative_similarity": 0.0}, "all loss weights are 0"),
    ],
)
def test_distill_loss_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillLoss(**kwargs)


def test_distill_loss_bf16_inputs_computed_in_float32():
    student, teacher = _batch()
    terms = DistillLoss()(student.bfloat16(), teacher.bfloat16())
    assert all(value.dtype == torch.float32 for value in terms.values())
    exact = DistillLoss()(student.bfloat16().float(), teacher.bfloat16().float())
    for name in terms:
        torch.testing.assert_close(terms[name], exact[name])


def test_distill_loss_sorts_the_teacher_once_per_batch(monkeypatch):
    calls = []
    original = losses.teacher_pair_order
    monkeypatch.setattr(losses, "teacher_pair_order", lambda t: calls.append(1) or original(t))
    student, teacher = _batch(b=8, d=16)
    loss = DistillLoss()
    heads = [student, F.normalize(student[:, :8], dim=-1), F.normalize(student[:, :4], dim=-1)]
    results = [loss(head, teacher, use_cosine=head.shape[1] == 16)["resim"] for head in heads]
    assert len(calls) == 1
    for head, value in zip(heads, results, strict=True):
        torch.testing.assert_close(value, relative_similarity_loss_reference(head, teacher))
    teacher.mul_(-1)  # an in-place change is a new teacher
    loss(student, teacher)
    assert len(calls) == 2
    loss(student, teacher.clone())  # so is another tensor
    assert len(calls) == 3
