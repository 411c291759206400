"""Stage 3: the MRL heads learn the teachers' in-batch geometry while the whole student trains (or FC1 and the
heads alone, on a frozen encoder)."""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch
from torch import Tensor, nn

from jasper.core.losses import TERMS, DistillLoss
from jasper.models.student import FC1, Student
from jasper.training.stages.base import DistillModule

log = logging.getLogger(__name__)


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

    ``train_encoder=False``: the encoder stays frozen (as stage 2 left it) and only FC1 and the heads train, so
    ``stages.stage3.feature_cache=true`` can cache its pooled states once, like stage 1, and every step skips the
    encoder. Not the paper's (it trains everything); a budget choice when stage 2 should have the encoder's steps.

    ``head_reduction``: how the heads' in-batch terms (sim + resim, weighted) combine. ``"mean"``, as the official
    code (NLPJCL/RAG-Retrieval, ``rag_retrieval/train/embedding/model_distill.py``: ``similarity_loss`` and
    ``triplet_loss`` summed over the MRL dims, the full one included, then divided by ``len(mrl_dims)``):
    ``cos(FC1) + mean over FC1 and the heads of (sim + resim)``, FC1's cosine counted once. ``"sum"``: every
    head's weighted total added, so n heads weigh n times more against FC1 (jasper before it was a setting; the
    embedded default keeps it). With ``keep_fc1_loss=False`` the mean is over the heads alone.
    """

    def __init__(
        self,
        student: Student,
        loss: DistillLoss,
        keep_fc1_loss: bool = True,
        head_lr: float | None = None,
        head_init: str = "fc1_prefix",
        head_teacher: str = "teacher",
        head_reduction: str = "mean",
        train_encoder: bool = True,
        **kwargs,
    ) -> None:
        if not student.mrl_dims:
            raise ValueError(
                "stage 3 trains the MRL heads but model.mrl_dims is empty: set e.g. model.mrl_dims=[1024,512,256]"
            )
        if head_init not in ("fc1_prefix", "random"):
            raise ValueError(f"stages.stage3.module.head_init={head_init!r}: choose fc1_prefix or random")
        if head_teacher not in ("teacher", "fc1"):
            raise ValueError(f"stages.stage3.module.head_teacher={head_teacher!r}: choose teacher or fc1")
        if head_reduction not in ("mean", "sum"):
            raise ValueError(
                f"stages.stage3.module.head_reduction={head_reduction!r}: choose mean (official code) or sum"
            )
        if loss.weights["similarity"] == 0 and loss.weights["relative_similarity"] == 0:
            raise ValueError(
                "stage 3 trains the MRL heads with the in-batch losses only (the cosine loss needs the teacher's "
                "width), but loss.similarity and loss.relative_similarity are both 0, so the heads would learn "
                "nothing: set them for this stage (stages.stage3.loss={similarity: 200, relative_similarity: 20}) "
                "or use loss=jasper"
            )
        self.keep_fc1_loss = keep_fc1_loss
        self.head_teacher = head_teacher
        self.head_reduction = head_reduction
        self.head_lr = head_lr
        self.train_encoder = train_encoder
        super().__init__(student, loss, **kwargs)
        if head_init == "fc1_prefix":
            init_heads_from_fc1(student, skip=student.heads_trained)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if self.train_encoder:
            return list(self.student.parameters())
        return list(self.student.fc1.parameters()) + list(self.student.heads.parameters())

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
        totals = []  # each head's weighted total, FC1's cosine term included
        for head, use_cosine, target in heads:
            head_terms, head_total = self.head_losses(head, vectors[head], target, use_cosine)
            terms.update(head_terms)
            totals.append(head_total)
        if self.head_reduction == "sum":
            return {**terms, "total": sum(totals)}
        return {**terms, "total": self.mean_over_heads(terms, [head for head, _, _ in heads])}

    def mean_over_heads(self, terms: dict[str, Tensor], heads: list[str]) -> Tensor:
        """``w_cos * cos(FC1) + (1 / n) * sum over the n heads of (w_sim * sim + w_resim * resim)``, from the
        logged terms (``fc1/loss_cos``, ``512/loss_sim``, ...); a term the loss left out (weight 0) counts 0."""
        weights = self.loss.weights
        in_batch = [
            weights[name] * terms[key]
            for head in heads
            for name in ("similarity", "relative_similarity")
            if (key := f"{head}/loss_{TERMS[name]}") in terms
        ]
        cosine = terms.get(f"{FC1}/loss_{TERMS['cosine']}")
        total = sum(in_batch) / len(heads)
        return total + weights["cosine"] * cosine if cosine is not None else total


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
