"""A callback for the train.py runs of tests/test_pipeline.py: which rows each rank trains on at each step.

Added on the command line (``+callbacks.record={_target_: tests.record_batches.RecordBatches, path: ...}``); train.py
runs from the repository root, so ``tests`` imports as a namespace package. One JSON line per training batch, in
``<path>.rank<r>``: the global step and a digest of each row's tokens and teacher vector.
"""

from __future__ import annotations

import hashlib
import json

import lightning as L
import torch


def row_digests(batch: dict) -> list[str]:
    """A digest per row of its input (tokens, or stage 1's cached encoder features) and its teacher vector."""
    teacher = batch["teacher"]
    if "features" in batch:
        inputs = [row.float().cpu().numpy().tobytes() for row in batch["features"]]
    else:
        mask = batch["attention_mask"].bool()
        inputs = [ids[m].cpu().numpy().tobytes() for ids, m in zip(batch["input_ids"], mask, strict=True)]
    digests = []
    for i, data in enumerate(inputs):
        digest = hashlib.blake2b(data, digest_size=8)
        digest.update(teacher[i].float().cpu().numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests


class RecordBatches(L.Callback):
    """``losses=True`` also saves, per training step and validation batch, this rank's vectors (dropout off, no
    autograd), its teacher rows and the module's loss terms on them (``<path>.rank<r>.train<step>.pt``,
    ``.val<batch>.pt``): under DDP with ``loss.gather_across_ranks`` those terms must be the single-process
    terms of both ranks' rows together."""

    def __init__(self, path: str, losses: bool = False) -> None:
        self.path = path
        self.losses = losses

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        line = {"step": trainer.global_step, "rows": row_digests(batch)}
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as file:
            file.write(json.dumps(line) + "\n")
        if self.losses:
            self._save_losses(trainer, module, batch, f"train{trainer.global_step}")

    def on_validation_batch_start(
        self, trainer, module, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.losses and not trainer.sanity_checking:
            self._save_losses(trainer, module, batch, f"val{batch_idx}")

    def _save_losses(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, name: str) -> None:
        training = module.training
        module.eval()
        with torch.no_grad():
            vectors = module(batch)
            terms = module.losses(vectors, batch["teacher"])
        module.train(training)
        record = {"vectors": vectors, "teacher": batch["teacher"], "terms": terms}
        torch.save(record, f"{self.path}.rank{trainer.global_rank}.{name}.pt")


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]
