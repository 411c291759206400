"""Stage 4: the vision tower learns to put an image where the student puts its caption.

Image tokens (:class:`jasper.models.vision.VisionTower`: timm encoder, then the released model's parameter-free
pooling or a k x k grid + MLP projector) enter the student's language model as input embeddings, then go through
its mean pooling, FC1 and heads. The teacher of each head is the caption's vector from the *same* head of the
frozen text path (no autograd), so dimensions match and the cosine term applies on every head (stage 3 could not
use it only because a reduced head was compared with the full teacher).

``jasper.training.run.build`` builds the tower (``vision=``, ``stages.stage4.vision_init_from``), gives the data
module the tower's preprocessing and the loss stage 4's weights (``stages.stage4.loss``); callbacks write
``vision.pt`` and the held-out recall before and after training (``SaveVision``, ``RecallReport`` in
:mod:`jasper.training.callbacks`, named by ``conf/callbacks/vision.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from jasper.core.losses import DistillLoss
from jasper.core.metrics import pair_recall
from jasper.models.student import Student
from jasper.models.vision import VisionTower, image_vectors
from jasper.training.stages.base import DistillModule

log = logging.getLogger(__name__)


class Stage4(DistillModule):
    """Per head: cos + sim + resim (``loss``) of the image's vector against its caption's; the heads' totals are
    averaged. Validation logs image<->caption recall per head (``val/<head>/i2t_R@1``, ...).

    ``vision``: the tower (``train.build`` makes it from ``vision=``), or a factory taking ``embed_dim`` (the
    config's ``_partial_`` VisionTower), for use outside ``train.build``.
    ``train_text``: also train the language model and heads (default: frozen, as in the paper).
    """

    def __init__(
        self,
        student: Student,
        loss: DistillLoss,
        vision: VisionTower | Callable[..., VisionTower],
        train_text: bool = False,
        **kwargs,
    ) -> None:
        tower = (
            vision
            if isinstance(vision, VisionTower)
            else vision(embed_dim=student.encoder.config.hidden_size)
        )
        self.train_text = train_text  # read by trainable_parameters() during the base __init__
        super().__init__(student, loss, **kwargs)
        self.vision = tower
        self.vision.requires_grad_(True)
        self._caption_cache: dict[str, dict[str, Tensor]] = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) if self.train_text else []

    def trained_heads(self) -> list[str]:
        return self.student.head_names

    def forward(self, batch: dict, heads: list[str] | None = None) -> dict[str, Tensor]:
        """The images' vectors by head, through the student's language model (gradients reach the tower)."""
        return image_vectors(self.student, self.vision, batch["pixels"], heads=heads or self.trained_heads())

    def teacher(self, batch: dict) -> dict[str, Tensor]:
        """The captions' vectors from the student's text path, without autograd. While the text path is frozen
        they never change, so each caption is encoded once and kept (on CPU)."""
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

    def validation_metrics(
        self, outputs: list[tuple[dict[str, Tensor], dict[str, Tensor]]]
    ) -> dict[str, float]:
        return {
            f"{head}/{name.replace('image->caption ', 'i2t_').replace('caption->image ', 't2i_')}": value
            for head, scores in recall_by_head(outputs).items()
            for name, value in scores.items()
        }

    @torch.no_grad()
    def held_out_recall(self, loader: DataLoader) -> dict[str, dict[str, float]]:
        """Image<->caption recall of every head on ``loader``'s pairs (:func:`jasper.core.metrics.pair_recall`), with
        ``chance R@1``; the module is put back in the mode it was in."""
        was_training = self.training
        self.eval()
        outputs = []
        for batch in loader:
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            outputs.append(({k: v.cpu() for k, v in self(batch).items()}, self.teacher(batch)))
        self.train(was_training)
        chance = 1.0 / sum(len(next(iter(images.values()))) for images, _ in outputs)
        return {head: {**scores, "chance R@1": chance} for head, scores in recall_by_head(outputs).items()}


def recall_by_head(outputs: list[tuple[dict[str, Tensor], dict[str, Tensor]]]) -> dict[str, dict[str, float]]:
    """Recall per head of batches of ``(image vectors by head, caption vectors by head)``."""
    return {
        head: pair_recall(
            torch.cat([images[head] for images, _ in outputs]),
            torch.cat([captions[head].cpu() for _, captions in outputs]),
        )
        for head in outputs[0][0]
    }
