"""One LightningModule per stage of the Jasper recipe. Each names what trains and which losses apply.

| stage | trains                          | losses                                                         |
| 1     | FC1 (encoder frozen, no grad)   | cos + sim + resim on FC1                                       |
| 2     | FC1 + last k encoder layers     | cos + sim + resim on FC1                                       |
| 3     | everything, MRL heads added     | sim + resim on every MRL head vs the full teacher (+ FC1 loss) |
| 4     | the vision tower (jasper/training/stages/stage4.py) | cos + sim + resim per head, image vs its caption's vector  |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from jasper.core.closed_form import ridge_fc1
from jasper.core.losses import DistillLoss
from jasper.core.metrics import teacher_fidelity
from jasper.data.datamodule import CachedRows
from jasper.models.encoders import encode_all
from jasper.models.student import FC1, Student
from jasper.storage.cache import PooledFeatures

log = logging.getLogger(__name__)
FEATURE_BATCH = 64  # texts per batch when stage 1 runs its frozen encoder once for the closed-form FC1


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

    # Hooks with the text stages' answer.
    def forward(self, batch: dict[str, Tensor], heads: list[str] | None = None) -> dict[str, Tensor]:
        """The student's vectors of the batch by head (``heads``; default: the trained ones)."""
        heads = self.trained_heads() if heads is None else heads
        if "features" in batch:  # stage-1 feature cache: the frozen encoder's pooled states, precomputed
            if not self.student.encoder_frozen:
                raise ValueError("cached features need a frozen encoder: feature_cache is for stage 1 only")
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
        size = len(next(iter(vectors.values())))
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "total"}, batch_size=size)
        self.log("train/loss", terms["total"].detach(), prog_bar=True, batch_size=size)
        return terms["total"]

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


def _join(parts: list) -> Tensor | dict[str, Tensor]:
    """Batches (tensors, or dicts of them by head) joined along the rows."""
    if isinstance(parts[0], dict):
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return torch.cat(parts)


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
    ``keep_fc1_loss=False``. ``head_lr``: the MRL heads' own lr (they are new, unlike the pretrained encoder and
    the FC1 of stages 1-2); ``None`` trains them at the optimiser's lr.

    ``head_init="fc1_prefix"`` starts each head of size d as FC1's first d outputs, so its vectors begin as a
    projection of the trained FC1 vector rather than a random one: random heads give large similarity losses whose
    gradients also reach the encoder and pull FC1 away from the teachers early in the stage. ``"random"`` keeps
    the heads as they are (the paper does not say how FC2-FC4 start). Heads that a stage already trained
    (``init_from`` a stage-3 student: ``student.heads_trained``) keep their weights either way. A head wider than
    FC1 gets FC1's rows and keeps random ones beyond them (the student warns when it is built).

    ``head_teacher="fc1"``: the heads learn the student's own FC1 vectors (detached) instead of the teachers'
    (self-distillation, the paper's proposed but untested idea); ``"teacher"``: the teachers' vectors (paper).
    """

    def __init__(
        self,
        student: Student,
        loss: DistillLoss,
        keep_fc1_loss: bool = True,
        head_lr: float | None = None,
        head_init: str = "fc1_prefix",
        head_teacher: str = "teacher",
        **kwargs,
    ) -> None:
        if not student.mrl_dims:
            raise ValueError(
                "stage 3 trains the MRL heads but model.mrl_dims is empty: set e.g. model.mrl_dims=[1024,512,256]"
            )
        if head_init not in ("fc1_prefix", "random"):
            raise ValueError(f"stage.module.head_init={head_init!r}: choose fc1_prefix or random")
        if head_teacher not in ("teacher", "fc1"):
            raise ValueError(f"stages.stage3.module.head_teacher={head_teacher!r}: choose teacher or fc1")
        if loss.weights["sim"] == 0 and loss.weights["resim"] == 0:
            raise ValueError(
                "stage 3 trains the MRL heads with the in-batch losses only (the cosine loss needs the teacher's "
                "width), but loss.similarity and loss.relative_similarity are both 0, so the heads would learn "
                "nothing: set them for this stage (stages.stage3.loss={similarity: 200, relative_similarity: 20}) "
                "or use loss=jasper"
            )
        self.keep_fc1_loss = keep_fc1_loss
        self.head_teacher = head_teacher
        self.head_lr = head_lr
        super().__init__(student, loss, **kwargs)
        if head_init == "fc1_prefix":
            init_heads_from_fc1(student, skip=student.heads_trained)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def parameter_groups(self) -> list[dict]:
        heads = list(self.student.heads.parameters())
        if self.head_lr is None or not heads:
            return super().parameter_groups()
        head_ids = {id(p) for p in heads}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return [{"params": rest}, {"params": heads, "lr": self.head_lr}]

    def trained_heads(self) -> list[str]:
        heads = [str(d) for d in self.student.mrl_dims]
        return [FC1, *heads] if self.keep_fc1_loss or self.head_teacher == "fc1" else heads

    def losses(self, vectors: dict[str, Tensor], teacher: Tensor) -> dict[str, Tensor]:
        # Self-distillation: FC1's vectors teach the heads but receive no gradient from them.
        head_target = vectors[FC1].detach() if self.head_teacher == "fc1" else teacher
        heads = [(str(d), False, head_target) for d in self.student.mrl_dims]
        if self.keep_fc1_loss:
            heads.insert(0, (FC1, True, teacher))
        terms: dict[str, Tensor] = {}
        total = 0.0
        for head, use_cosine, target in heads:
            head_terms, head_total = self.head_losses(head, vectors[head], target, use_cosine)
            terms.update(head_terms)
            total = total + head_total
        return {**terms, "total": total}


@torch.no_grad()
def init_heads_from_fc1(student: Student, skip: Collection[str] = ()) -> None:
    """Each separate head of size d takes FC1's first min(d, FC1) rows (weights and bias), except the heads in
    ``skip`` (already trained: they keep their weights)."""
    kept = sorted(set(skip) & set(student.heads), key=int)
    if kept:
        log.info("heads %s keep their trained weights (head_init=fc1_prefix starts only the others)", kept)
    for name, head in student.heads.items():
        if name in kept:
            continue
        rows = min(int(name), student.fc1_dim)
        head.weight[:rows].copy_(student.fc1.weight[:rows])
        head.bias[:rows].copy_(student.fc1.bias[:rows])
