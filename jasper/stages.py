"""One LightningModule per stage of the Jasper recipe. Each names what trains and which losses apply.

| stage | trains                          | losses                                                         |
| 1     | FC1 (encoder frozen, no grad)   | cos + sim + resim on FC1                                       |
| 2     | FC1 + last k encoder layers     | cos + sim + resim on FC1                                       |
| 3     | everything, MRL heads added     | sim + resim on every MRL head vs the full teacher (+ FC1 loss) |
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from jasper.evaluation.fidelity import teacher_fidelity
from jasper.losses import DistillLoss
from jasper.student import FC1, Student


class DistillModule(L.LightningModule):
    """What every stage shares: forward, loss logging, validation fidelity, optimiser and schedule."""

    def __init__(
        self,
        student: Student,
        loss: DistillLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.student.train()  # from_pretrained leaves the encoder in eval mode (dropout off)
        self.student.requires_grad_(False)
        for parameter in self.trainable_parameters():
            parameter.requires_grad_(True)
        # An encoder none of whose parameters train runs without autograd (and in eval mode, see below).
        self.student.encoder_frozen = not any(p.requires_grad for p in self.student.encoder.parameters())
        self._val_outputs: list[tuple[dict[str, Tensor], Tensor]] = []

    # What a stage decides.
    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def losses(self, vectors: dict[str, Tensor], teacher: Tensor) -> dict[str, Tensor]:
        """Loss terms by log name (``fc1/cos``, ``512/sim``, ...) plus ``total``."""
        raise NotImplementedError

    def trained_heads(self) -> list[str]:
        return [FC1]

    # Shared machinery.
    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.student(batch["input_ids"], batch["attention_mask"], heads=self.trained_heads())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.losses(self(batch), batch["teacher"])
        size = len(batch["teacher"])
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "total"}, batch_size=size)
        self.log("train/loss", terms["total"].detach(), prog_bar=True, batch_size=size)
        return terms["total"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        vectors = self.student(batch["input_ids"], batch["attention_mask"])
        terms = self.losses({k: vectors[k] for k in self.trained_heads()}, batch["teacher"])
        self.log("val/loss", terms["total"], batch_size=len(batch["teacher"]))
        self._val_outputs.append(({k: v.cpu() for k, v in vectors.items()}, batch["teacher"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        teacher = torch.cat([t for _, t in self._val_outputs])
        for head in self.student.head_names:
            student = torch.cat([v[head] for v, _ in self._val_outputs])
            scores = teacher_fidelity(student, teacher)
            if scores["cosine"] is not None:
                self.log(f"val/cosine_{head}", scores["cosine"])
            self.log(f"val/spearman_{head}", scores["spearman"])
        self._val_outputs.clear()

    def on_train_epoch_start(self) -> None:
        # A frozen encoder stays in eval mode: dropout off, so its features are a fixed function of the text.
        if self.student.encoder_frozen:
            self.student.encoder.eval()

    def configure_optimizers(self):
        parameters = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def head_losses(
        self, head: str, student: Tensor, teacher: Tensor, use_cosine: bool
    ) -> tuple[dict[str, Tensor], Tensor]:
        """One head's weighted loss and its terms, named for the log (``fc1/loss_cos``, ``512/loss_sim``)."""
        terms = self.loss(student, teacher, use_cosine=use_cosine)
        total = terms.pop("total")
        return {f"{head}/loss_{k}": v for k, v in terms.items()}, total


class Stage1(DistillModule):
    """FC1 learns to map the frozen encoder's pooled states to the teachers' space."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.fc1.parameters())

    def losses(self, vectors: dict[str, Tensor], teacher: Tensor) -> dict[str, Tensor]:
        terms, total = self.head_losses(FC1, vectors[FC1], teacher, use_cosine=True)
        return {**terms, "total": total}


class Stage2(Stage1):
    """FC1 and the last ``unfreeze_layers`` encoder layers train; the rest of the encoder stays frozen."""

    def __init__(self, student: Student, loss: DistillLoss, unfreeze_layers: int = 3, **kwargs) -> None:
        layers = len(student.layers)
        if not 1 <= unfreeze_layers <= layers:
            raise ValueError(
                f"stage.module.unfreeze_layers={unfreeze_layers} but the student has {layers} layers: choose 1..{layers}"
            )
        self.unfreeze_layers = unfreeze_layers  # read by trainable_parameters() during the base __init__
        super().__init__(student, loss, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        top = self.student.layers[-self.unfreeze_layers :]
        return list(self.student.fc1.parameters()) + list(top.parameters())


class Stage3(DistillModule):
    """The whole student trains. Every MRL head learns the teachers' in-batch geometry (sim + resim against the
    full teacher vector: its dimension differs, so no cosine term); FC1 keeps its three-loss objective unless
    ``keep_fc1_loss=False``."""

    def __init__(self, student: Student, loss: DistillLoss, keep_fc1_loss: bool = True, **kwargs) -> None:
        if not student.mrl_dims:
            raise ValueError(
                "stage 3 trains the MRL heads but model.mrl_dims is empty: set e.g. model.mrl_dims=[1024,512,256]"
            )
        self.keep_fc1_loss = keep_fc1_loss
        super().__init__(student, loss, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def trained_heads(self) -> list[str]:
        heads = [str(d) for d in self.student.mrl_dims]
        return [FC1, *heads] if self.keep_fc1_loss else heads

    def losses(self, vectors: dict[str, Tensor], teacher: Tensor) -> dict[str, Tensor]:
        heads = [(str(d), False) for d in self.student.mrl_dims]
        if self.keep_fc1_loss:
            heads.insert(0, (FC1, True))
        terms: dict[str, Tensor] = {}
        total = 0.0
        for head, use_cosine in heads:
            head_terms, head_total = self.head_losses(head, vectors[head], teacher, use_cosine)
            terms.update(head_terms)
            total = total + head_total
        return {**terms, "total": total}
