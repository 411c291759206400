"""What every stage shares: :class:`DistillModule`, one training step for all four stages of the Jasper recipe.

| stage | module                | trains                          | losses                                                    |
| 1     | stage1.Stage1         | FC1 (encoder frozen, no grad)   | cos + sim + resim on FC1                                  |
| 2     | stage2.Stage2         | FC1 + last k encoder layers     | cos + sim + resim on FC1                                  |
| 3     | stage3.Stage3         | everything, MRL heads added     | sim + resim on every MRL head vs the full teacher (+ FC1) |
|       |                       | (train_encoder=false: FC1 + heads on the frozen encoder)  |                                 |
| 4     | stage4.Stage4         | the vision tower                | cos + sim + resim per head, image vs its caption          |

A stage is a short subclass naming what trains and which losses apply; everything else is here.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from jasper.core.losses import DistillLoss
from jasper.core.metrics import teacher_fidelity
from jasper.models.student import FC1, Student
from jasper.storage.checkpoints import HEADS_TRAINED, non_finite


class NonFiniteLoss(FloatingPointError):
    """A loss term (or, at a checkpoint, a weight) became NaN or inf: the stage stops (:meth:`DistillModule.check_finite`)."""


class DistillModule(L.LightningModule):
    """What every stage shares: forward, loss logging, validation metrics, optimiser and schedule.

    One training step serves every stage: ``losses(self(batch), self.teacher(batch))``. A stage names what trains
    (``trainable_parameters``), which heads it trains (``trained_heads``) and its loss terms (``losses``); stage 4
    also says what its student vectors and teacher are (``forward``, ``teacher``) and what validation measures
    (``validation_metrics``).
    """

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
        self._val_outputs: list[tuple[dict[str, Tensor], Tensor]] = []

    # What a stage decides.
    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def losses(self, vectors: dict[str, Tensor], teacher: Tensor) -> dict[str, Tensor]:
        """Loss terms by log name (``fc1/cos``, ``512/sim``, ...) plus ``total``."""
        raise NotImplementedError

    def trained_heads(self) -> list[str]:
        return [FC1]

    # Hooks with the text stages' answer.
    def forward(self, batch: dict[str, Tensor], heads: list[str] | None = None) -> dict[str, Tensor]:
        """The student's vectors of the batch by head (``heads``; default: the trained ones)."""
        heads = self.trained_heads() if heads is None else heads
        # feature cache (stage 1, frozen stage 3): the encoder's pooled states, precomputed
        if "features" in batch:
            if not self.student.encoder_frozen:
                raise ValueError(
                    f"{self.stage_name()} trains the encoder, so its pooled states cannot be cached: "
                    "feature_cache is for stage 1 and for stage 3 with module.train_encoder=false"
                )
            return self.student.project(batch["features"].to(self.student.fc1.weight.dtype), heads)
        return self.student(batch["input_ids"], batch["attention_mask"], heads=heads)

    def teacher(self, batch: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """What the student's vectors learn to match: the teachers' (cached) vectors of the batch's texts."""
        return batch["teacher"]

    def validation_metrics(self, outputs: list[tuple[dict[str, Tensor], Tensor]]) -> dict[str, float]:
        """Metrics (logged as ``val/<name>``) of the held-out ``(student vectors by head, teacher)`` batches:
        teacher fidelity of every head (``cosine_fc1``, ``spearman_<head>``; :func:`jasper.core.metrics.teacher_fidelity`)."""
        teacher = torch.cat([t for _, t in outputs])
        metrics = {}
        for head in self.student.head_names:
            scores = teacher_fidelity(torch.cat([v[head] for v, _ in outputs]), teacher)
            if scores["cosine"] is not None:
                metrics[f"cosine_{head}"] = scores["cosine"]
            metrics[f"spearman_{head}"] = scores["spearman"]
        return metrics

    # Shared machinery.
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        vectors = self(batch)
        terms = self.losses(vectors, self.teacher(batch))
        self.check_finite(terms)
        size = len(next(iter(vectors.values())))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "total"}, batch_size=size)
        self.log("train/loss", terms["total"].detach(), prog_bar=True, batch_size=size)
        return terms["total"]

    def check_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop the stage at the first step whose loss holds a NaN or an inf (on any rank), naming the stage, the
        step, the head and the term. It is raised before the backward pass, so no update is made with it: the last
        Lightning checkpoint stays the last good one, and no ``student.pt`` is written (``SaveStudent`` runs only at
        the end of a fit that finished). One device sync per step."""
        values = {name: torch.as_tensor(value).detach() for name, value in terms.items()}
        bad = not bool(torch.isfinite(torch.stack([v.float().reshape(()) for v in values.values()])).all())
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        found = [
            f"term {name.partition('/loss_')[2]} of head {name.partition('/')[0]} = {float(v)}"
            if "/loss_" in name
            else f"{name} = {float(v)}"
            for name, v in values.items()
            if not bool(torch.isfinite(v).all())
        ]
        stage = self.stage_name()
        raise NonFiniteLoss(
            f"{stage}, step {self.global_step + 1}: the loss is not finite ("
            + ("; ".join(found) or "on another rank")
            + f"). The stage stops here; its last checkpoint (if any) predates this step and no student.pt is "
            f"written. Lower the learning rate (stages.stage{self.stage_number() or 'N'}.module.optimizer.lr) or "
            "check the teacher vectors (python precompute.py verify=true)"
        )

    def stage_number(self) -> int | None:
        """The stage this module trains, from the run's config (``save_hyperparameters`` in ``train.build``)."""
        stage = (self.hparams.get("config") or {}).get("stage")
        return int(stage) if stage is not None else None

    def stage_name(self) -> str:
        number = self.stage_number()
        return f"stage {number}" if number is not None else type(self).__name__

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        vectors = self(batch, heads=self.student.head_names)
        teacher = self.teacher(batch)
        terms = self.losses({k: vectors[k] for k in self.trained_heads()}, teacher)
        size = len(next(iter(vectors.values())))
        self.log("val/loss", terms["total"], batch_size=size, sync_dist=True)
        self._val_outputs.append(apply_to_collection((vectors, teacher), Tensor, Tensor.cpu))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        for name, value in self.validation_metrics(self.held_out_rows(self._val_outputs)).items():
            self.log(f"val/{name}", value)
        self._val_outputs.clear()

    def held_out_rows(self, outputs: list[tuple]) -> list[tuple]:
        """The validation batches of every rank, in the held-out set's order, so that each rank's metrics are the
        whole set's; one process: ``outputs`` as they are. Lightning's DistributedSampler (no shuffling for
        validation) deals row i to rank i mod W and repeats the first rows to even the ranks out: the gathered
        rows interleaved, cut to the set's length, are the set."""
        world = self.trainer.world_size
        if world == 1:
            return outputs
        local = tuple(_join([batch[part] for batch in outputs]) for part in (0, 1))
        gathered = self.all_gather(
            apply_to_collection(local, Tensor, lambda x: x.to(self.device))
        )  # every leaf (W, n, ...)
        size = len(self.trainer.val_dataloaders.dataset)
        return [apply_to_collection(gathered, Tensor, lambda x: x.transpose(0, 1).flatten(0, 1)[:size].cpu())]

    def on_train_start(self) -> None:
        # The record of trained heads follows what trains: saved with student.pt and with every checkpoint.
        self.student.heads_trained |= {
            name
            for name, head in self.student.heads.items()
            if any(p.requires_grad for p in head.parameters())
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[HEADS_TRAINED] = sorted(self.student.heads_trained, key=int)
        bad = non_finite(checkpoint["state_dict"])  # a finite loss can leave NaN weights (NaN gradients)
        if bad:
            raise NonFiniteLoss(
                f"{self.stage_name()}, step {self.global_step}: weights {bad[:5]} hold NaN/inf; the checkpoint is "
                "not written (the previous one is the last good one). Lower the learning rate "
                f"(stages.stage{self.stage_number() or 'N'}.module.optimizer.lr)"
            )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # A frozen encoder stays in eval mode: dropout off, so its features are a fixed function of the text.
        # Per batch, not per epoch: Lightning puts the module back in train mode after every validation run.
        if self.student.encoder_frozen:
            self.student.encoder.eval()

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups: every parameter that trains, at the configured lr."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
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


def _join(parts: list) -> Tensor | dict[str, Tensor]:
    """Batches (tensors, or dicts of them by head) joined along the rows."""
    if isinstance(parts[0], dict):
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return torch.cat(parts)
