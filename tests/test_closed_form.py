import functools

import pytest
import torch
import torch.nn.functional as F

from jasper.core.closed_form import ridge_fc1
from jasper.core.losses import DistillLoss, cosine_loss


@pytest.mark.parametrize("n, h, d", [(40, 8, 6), (300, 32, 48), (1000, 64, 16)])
def test_ridge_without_penalty_equals_lstsq(n, h, d):
    torch.manual_seed(n)
    x, t = torch.randn(n, h, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    weight, bias = ridge_fc1(x, t, ridge=0.0)
    ones = torch.ones(n, 1, dtype=torch.float64)
    solution = torch.linalg.lstsq(torch.cat([x, ones], dim=1), t).solution  # (H + 1, D)
    torch.testing.assert_close(weight, solution[:-1].T.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bias, solution[-1].float(), rtol=1e-4, atol=1e-5)


def test_ridge_shrinks_the_weights():
    torch.manual_seed(0)
    x, t = torch.randn(50, 8), torch.randn(50, 4)
    assert ridge_fc1(x, t, 10.0)[0].norm() < ridge_fc1(x, t, 0.0)[0].norm()


@pytest.mark.outcome
def test_closed_form_fc1_lowers_the_cosine_loss_against_a_random_fc1(outcome):
    torch.manual_seed(outcome.seed)
    x = torch.randn(500, 16)
    teacher = F.normalize(
        torch.tanh(x @ torch.randn(16, 24)), dim=-1
    )  # a non-linear teacher, not exactly linear
    fc1 = torch.nn.Linear(16, 24)
    random_loss = cosine_loss(F.normalize(fc1(x), dim=-1), teacher)
    weight, bias = ridge_fc1(x, teacher, ridge=1e-3)
    solved_loss = cosine_loss(F.normalize(x @ weight.T + bias, dim=-1), teacher)
    outcome.check("random / solved cosine loss", random_loss / solved_loss, 4.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_are_refused_by_number(bad):
    x, t = torch.randn(20, 4), torch.randn(20, 3)
    x[7, 1] = bad
    with pytest.raises(ValueError, match=r"1 row\(s\), first rows \[7\]"):
        ridge_fc1(x, t)


def test_mismatched_row_counts_are_refused():
    with pytest.raises(ValueError, match="same N"):
        ridge_fc1(torch.randn(10, 4), torch.randn(9, 3))


def test_stage1_solves_fc1_at_fit_start(tiny_bert):
    """Through Lightning: with steps=0 the FC1 that stage 1 leaves is exactly the ridge solution."""
    import lightning as L

    from jasper.models.student import Student
    from jasper.storage.cache import PooledFeatures
    from jasper.training.stages.stage1 import Stage1

    class Data(L.LightningDataModule):
        def __init__(self, student):
            super().__init__()
            texts = [f"sentence number {i} about " + "things " * (i % 7) for i in range(64)]
            self.features = PooledFeatures(student).encode(texts)
            self.train_set = type(
                "Set",
                (),
                {
                    "texts": texts,
                    "features": self.features,
                    "teacher_vectors": F.normalize(torch.randn(64, 24), dim=-1),
                },
            )()

        def train_dataloader(self):
            return torch.utils.data.DataLoader([], batch_size=1)

    torch.manual_seed(0)
    student = Student(tiny_bert, fc1_dim=24, num_layers=2)
    student.encoder.eval()
    data = Data(student)
    module = Stage1(
        student, DistillLoss(), closed_form=1e-3, optimizer=functools.partial(torch.optim.SGD, lr=0.1)
    )
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    weight, bias = ridge_fc1(data.features, data.train_set.teacher_vectors, 1e-3)
    torch.testing.assert_close(student.fc1.weight.detach(), weight)
    torch.testing.assert_close(student.fc1.bias.detach(), bias)
