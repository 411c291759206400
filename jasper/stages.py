"""One LightningModule per stage of the Jasper recipe. Each names what trains and which losses apply.

| stage | trains                          | losses                                                         |
| 1     | FC1 (encoder frozen, no grad)   | cos + sim + resim on FC1                                       |
| 2     | FC1 + last k encoder layers     | cos + sim + resim on FC1                                       |
| 3     | everything, MRL heads added     | sim + resim on every MRL head vs the full teacher (+ FC1 loss) |
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from jasper.cache import PooledFeatures, encode_sorted
from jasper.closed_form import ridge_fc1
from jasper.data.datamodule import CachedRows
from jasper.evaluation.fidelity import teacher_fidelity
from jasper.losses import DistillLoss
from jasper.student import FC1, Student

log = logging.getLogger(__name__)


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
        if "features" in batch:  # stage-1 feature cache: the frozen encoder's pooled states, precomputed
            if not self.student.encoder_frozen:
                raise ValueError("cached features need a frozen encoder: feature_cache is for stage 1 only")
            return self.student.project(
                batch["features"].to(self.student.fc1.weight.dtype), self.trained_heads()
            )
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
    pooled state to its teacher vector (:func:`jasper.closed_form.ridge_fc1`, seconds); the configured steps then
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
            features = encode_sorted(PooledFeatures(self.student), dataset.texts, batch_size=64)
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
    the heads as they are (the paper does not say how FC2-FC4 start).

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
            init_heads_from_fc1(student)
        student.fresh_heads = set()  # stage 3 trains every head

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
def init_heads_from_fc1(student: Student) -> None:
    """Each fresh separate head of size d <= FC1's takes FC1's first d rows (weights and bias); heads loaded
    with trained weights (``init_from`` a stage-3 student) keep them."""
    for name, head in student.heads.items():
        if name not in student.fresh_heads:
            continue
        rows = min(int(name), student.fc1_dim)
        head.weight[:rows].copy_(student.fc1.weight[:rows])
        head.bias[:rows].copy_(student.fc1.bias[:rows])


class Stage4(DistillModule):
    """The vision tower learns to put an image where the student puts its caption.

    Image tokens (:class:`jasper.vision.VisionTower`: timm encoder, k x k pooling, MLP projector) enter the student's
    language model as input embeddings, then go through its mean pooling, FC1 and heads. The teacher of each head is
    the caption's vector from the *same* head of the frozen text path (no autograd), so dimensions match and the
    cosine term applies on every head (stage 3 could not use it only because a reduced head was compared with the
    full teacher). Per head: cos + sim + resim (``loss``); the heads' totals are averaged.

    ``vision``: a tower, or a factory taking ``embed_dim`` (the config's ``_partial_`` VisionTower).
    ``train_text``: also train the language model and heads (default: frozen, as in the paper).
    ``vision_init_from``: a ``vision.pt`` or stage-4 ``.ckpt`` to continue from. ``save_path``: where the tower
    is written at the end of fit (``vision.pt`` beside ``student.pt``). ``report_dir``: where the held-out
    image<->caption recall before and after training is written (``image_retrieval.{json,md}``).
    ``loss_weights``: stage 4's own overrides of ``loss=`` (``cosine``, ``similarity``, ``relative_similarity``,
    ``margin``); the embedded default raises the cosine weight (conf/vision/minilm_l3.yaml, docs/vision.md).
    """

    def __init__(
        self,
        student: Student,
        loss: DistillLoss,
        vision,
        train_text: bool = False,
        vision_init_from: str | None = None,
        save_path: str | None = None,
        report_dir: str | None = None,
        loss_weights: dict | None = None,
        **kwargs,
    ) -> None:
        from jasper.vision import VisionTower, load_vision_weights

        if vision is None:
            raise ValueError(
                f"stage 4 needs a vision tower but no vision config is selected for model {student.model_name_or_path}: "
                "add vision=tiny (or vision=siglip_so400m) to the command line"
            )
        tower = (
            vision
            if isinstance(vision, VisionTower)
            else vision(embed_dim=student.encoder.config.hidden_size)
        )
        if vision_init_from:
            load_vision_weights(tower, vision_init_from)
        if loss_weights:  # stage 4's own weights on top of loss= (the other stages keep loss= as it is)
            unknown = set(loss_weights) - {"cosine", "similarity", "relative_similarity", "margin"}
            if unknown:
                raise ValueError(f"stages.stage4.module.loss_weights: unknown keys {sorted(unknown)}")
            loss = DistillLoss(
                **{
                    "cosine": loss.weights["cos"],
                    "similarity": loss.weights["sim"],
                    "relative_similarity": loss.weights["resim"],
                    "margin": loss.margin,
                    "gather_across_ranks": loss.gather_across_ranks,
                    **loss_weights,
                }
            )
        self.train_text = train_text  # read by trainable_parameters() during the base __init__
        super().__init__(student, loss, **kwargs)
        self.vision = tower
        self.vision.requires_grad_(True)
        self.student.attach_vision(tower)
        self.save_path = save_path
        self.report_dir = report_dir
        self.recall_before: dict[str, float] | None = None
        self._val_pairs: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []
        self._caption_cache: dict[str, dict[str, Tensor]] = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) if self.train_text else []

    def trained_heads(self) -> list[str]:
        return self.student.head_names

    def forward(self, batch: dict) -> dict[str, Tensor]:
        from jasper.vision import image_vectors

        return image_vectors(self.student, self.vision, batch["pixels"], heads=self.trained_heads())

    def caption_vectors(self, batch: dict) -> dict[str, Tensor]:
        """The teacher: the captions' vectors from the student's text path, without autograd. While the text path
        is frozen they never change, so each caption is encoded once and kept (on CPU)."""
        heads = self.trained_heads()
        with torch.no_grad():
            if self.train_text or "captions" not in batch:
                return self.student(batch["input_ids"], batch["attention_mask"], heads=heads)
            captions = batch["captions"]
            missing = [i for i, c in enumerate(captions) if c not in self._caption_cache]
            if missing:
                rows = torch.tensor(missing, device=batch["input_ids"].device)
                fresh = self.student(batch["input_ids"][rows], batch["attention_mask"][rows], heads=heads)
                for j, i in enumerate(missing):
                    self._caption_cache[captions[i]] = {h: fresh[h][j].cpu() for h in heads}
            return {
                h: torch.stack([self._caption_cache[c][h] for c in captions]).to(self.device) for h in heads
            }

    def losses(self, vectors: dict[str, Tensor], teacher: dict[str, Tensor]) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total = 0.0
        for head in self.trained_heads():
            head_terms, head_total = self.head_losses(head, vectors[head], teacher[head], use_cosine=True)
            terms.update(head_terms)
            total = total + head_total
        return {**terms, "total": total / len(self.trained_heads())}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "transform", None) is None:
            datamodule.transform = self.vision.transform  # the tower's own timm preprocessing

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        teacher = self.caption_vectors(batch)
        terms = self.losses(self(batch), teacher)
        size = len(batch["pixels"])
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "total"}, batch_size=size)
        self.log("train/loss", terms["total"].detach(), prog_bar=True, batch_size=size)
        return terms["total"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, captions = self(batch), self.caption_vectors(batch)
        self.log("val/loss", self.losses(images, captions)["total"], batch_size=len(batch["pixels"]))
        self._val_pairs.append(
            ({k: v.cpu() for k, v in images.items()}, {k: v.cpu() for k, v in captions.items()})
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_pairs:
            return
        for head, scores in self._recall(self._val_pairs).items():
            for name, value in scores.items():
                self.log(f"val/{head}/{name}", value)
        self._val_pairs.clear()

    @staticmethod
    def _recall(outputs: list[tuple[dict[str, Tensor], dict[str, Tensor]]]) -> dict[str, dict[str, float]]:
        from jasper.evaluation.image_retrieval import pair_recall

        heads = outputs[0][0].keys()
        return {
            head: {
                k.replace("image->caption ", "i2t_").replace("caption->image ", "t2i_"): v
                for k, v in pair_recall(
                    torch.cat([i[head] for i, _ in outputs]), torch.cat([c[head] for _, c in outputs])
                ).items()
            }
            for head in heads
        }

    @torch.no_grad()
    def held_out_recall(self) -> list:
        """Rows (:class:`jasper.evaluation.report.ResultRow`) of held-out recall, one per head."""
        from jasper.evaluation.image_retrieval import pair_recall
        from jasper.evaluation.report import ResultRow

        datamodule = self.trainer.datamodule
        was_training = self.training
        self.eval()
        outputs = []
        for batch in datamodule.val_dataloader():
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            outputs.append(({k: v.cpu() for k, v in self(batch).items()}, self.caption_vectors(batch)))
        self.train(was_training)
        rows = []
        for head in self.trained_heads():
            images = torch.cat([i[head] for i, _ in outputs])
            captions = torch.cat([c[head].cpu() for _, c in outputs])
            metrics = {**pair_recall(images, captions), "chance R@1": 1.0 / len(images)}
            rows.append(ResultRow("", head, self.student.head_dim(head), metrics))
        return rows

    def on_fit_start(self) -> None:
        if self.report_dir and self.trainer.is_global_zero:
            self.recall_before = self.held_out_recall()

    def on_fit_end(self) -> None:
        from jasper.evaluation.image_retrieval import write_before_after
        from jasper.vision import save_vision

        if not self.trainer.is_global_zero:
            return
        if self.save_path:
            save_vision(self.vision, self.save_path)
        if self.report_dir:
            write_before_after(self.recall_before or [], self.held_out_recall(), self.report_dir)
