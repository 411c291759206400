"""Stage 2: FC1 and the encoder's last layers train on stage 1's losses."""

from __future__ import annotations

from torch import nn

from jasper.core.losses import DistillLoss
from jasper.models.student import Student
from jasper.training.stages.stage1 import Stage1


class Stage2(Stage1):
    """FC1 and the last ``unfreeze_layers`` encoder layers train; the rest of the encoder stays frozen."""

    def __init__(self, student: Student, loss: DistillLoss, unfreeze_layers: int = 3, **kwargs) -> None:
        layers = len(student.layers)
        if not 1 <= unfreeze_layers <= layers:
            raise ValueError(
                f"stages.stage2.module.unfreeze_layers={unfreeze_layers} but the student has {layers} layers: choose 1..{layers}"
            )
        self.unfreeze_layers = unfreeze_layers  # read by trainable_parameters() during the base __init__
        super().__init__(student, loss, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        top = self.student.layers[-self.unfreeze_layers :]
        return list(self.student.fc1.parameters()) + list(top.parameters())
