"""Stage 1: FC1 learns to map the frozen encoder's pooled states to the teachers' space."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from jasper.core.closed_form import ridge_fc1
from jasper.core.losses import DistillLoss
from jasper.data.text_dataset import CachedRows
from jasper.models.encoders import encode_all
from jasper.models.student import FC1, Student
from jasper.storage.cache import PooledFeatures
from jasper.training.stages.base import DistillModule

log = logging.getLogger(__name__)
FEATURE_BATCH = 64  # texts per batch when stage 1 runs its frozen encoder once for the closed-form FC1


class Stage1(DistillModule):
    """FC1 learns to map the frozen encoder's pooled states to the teachers' space.

    ``closed_form``: a ridge strength (e.g. ``1e-3``) to first solve FC1 in closed form from every training text's
    pooled state to its teacher vector (:func:`jasper.core.closed_form.ridge_fc1`, seconds); the configured steps then
    polish it with the three losses (``steps: 0`` keeps the solution as it is). ``None``: FC1 starts as loaded.
    """

    def __init__(
        self, student: Student, loss: DistillLoss, closed_form: float | None = None, **kwargs
    ) -> None:
        self.closed_form = closed_form
        super().__init__(student, loss, **kwargs)

    def on_fit_start(self) -> None:
        if self.closed_form is None or self.trainer.ckpt_path is not None:
            return  # a resumed run already holds its solved (and polished) FC1
        dataset = self.trainer.datamodule.train_set
        teacher = as_tensor(dataset.teacher_vectors)
        if dataset.features is not None:
            features = as_tensor(dataset.features)
        else:  # no stage-1 feature cache: run the frozen encoder once over the training texts
            features = encode_all(PooledFeatures(self.student), dataset.texts, batch_size=FEATURE_BATCH)
        weight, bias = ridge_fc1(features, teacher, self.closed_form)
        with torch.no_grad():
            self.student.fc1.weight.copy_(weight)
            self.student.fc1.bias.copy_(bias)
        log.info("FC1 solved in closed form (ridge %g) on %d texts", self.closed_form, len(teacher))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.fc1.parameters())

    def losses(self, vectors: dict[str, Tensor], teacher: Tensor) -> dict[str, Tensor]:
        terms, total = self.head_losses(FC1, vectors[FC1], teacher, use_cosine=True)
        return {**terms, "total": total}


def as_tensor(table: Tensor | CachedRows) -> Tensor:
    return table if isinstance(table, Tensor) else table.tensor()
