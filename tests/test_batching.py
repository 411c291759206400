"""jasper/data/batching.py: seeded epochs, and a run interrupted and resumed from its checkpoint sees exactly the
batches (and ends with exactly the weights) of an uninterrupted run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from jasper.data.batching import (
    EpochRandomSampler,
    LengthBucketBatchSampler,
    ResumableBatchSampler,
    ResumableDataLoader,
)


class Recorder(L.LightningModule):
    """Remembers every batch it trains on; one weight that every batch moves."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.tolist())
        return ((batch.float() - self.weight) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def loader(buckets: bool = False) -> ResumableDataLoader:
    data = list(range(10))
    sampler = EpochRandomSampler(data, seed=3)
    if buckets:
        batches = LengthBucketBatchSampler(sampler, 2, True, lengths=data, window_batches=2, seed=3)
    else:
        batches = ResumableBatchSampler(sampler, 2, drop_last=True)
    return ResumableDataLoader(data, batch_sampler=batches)


def fit(max_steps: int, root, ckpt_path=None, buckets: bool = False) -> Recorder:
    module = Recorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(module, train_dataloaders=loader(buckets), ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("buckets", [False, True])
@pytest.mark.parametrize("stop", [3, 5])  # mid-epoch, and at the end of the first epoch (5 batches an epoch)
def test_resumed_run_sees_the_batches_of_an_uninterrupted_one(tmp_path, stop, buckets):
    whole = fit(8, tmp_path / "whole", buckets=buckets)
    first = fit(stop, tmp_path / "cut", buckets=buckets)
    (ckpt,) = (tmp_path / "cut").glob(f"*step={stop}.ckpt")
    resumed = fit(8, tmp_path / "cut", ckpt_path=ckpt, buckets=buckets)
    assert first.seen + resumed.seen == whole.seen
    assert sorted(i for b in whole.seen[:5] for i in b) == list(range(10))  # epoch 1 covers every row once
    assert whole.seen[5:] != whole.seen[:3]  # epoch 2 does not replay epoch 1's order
    torch.testing.assert_close(resumed.weight, whole.weight, rtol=0, atol=0)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a, b = EpochRandomSampler(range(50), seed=1), EpochRandomSampler(range(50), seed=1)
    assert list(a) == list(a) == list(b)
    b.set_epoch(1)
    assert list(b) != list(a) and sorted(b) == list(range(50))
    assert list(EpochRandomSampler(range(50), seed=2)) != list(a)
