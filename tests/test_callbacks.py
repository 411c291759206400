"""jasper/training/callbacks.py: the per-head wandb panels, checked in an offline run's own files."""

from __future__ import annotations

import json
import time

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from jasper.training.callbacks import HeadPanels, head_rows


class Heads:
    head_names = ["fc1", "64", "32"]

    def head_dim(self, head: str) -> int:
        return 384 if head == "fc1" else int(head)


class Module(L.LightningModule):
    """Trains the heads (as stage 3 does) and logs their validation fidelity."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.student = Heads()

    def trained_heads(self) -> list[str]:
        return self.student.head_names

    def training_step(self, batch, batch_idx):
        for head, value in [("fc1", 0.9), ("64", 0.8), ("32", 0.7)]:
            self.log(f"val/spearman_{head}", value)
        return (batch.float() - self.weight).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_head_rows_read_the_final_metrics():
    rows = head_rows(Heads(), {"val/spearman_fc1": torch.tensor(0.5), "val/cosine_fc1": 0.9})
    assert rows == [["fc1", 384, 0.5, 0.9], ["64", 64, None, None], ["32", 32, None, None]]


def test_offline_run_holds_the_head_table_and_curve(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(
        project="jasper-test", name="r-stage3", group="r", save_dir=str(tmp_path), offline=True
    )
    trainer = L.Trainer(
        max_steps=1,
        logger=logger,
        callbacks=[HeadPanels(stage=3)],
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(Module(), train_dataloaders=torch.utils.data.DataLoader([1, 2], batch_size=2))
    logger.experiment.finish()
    (table,) = tmp_path.glob("wandb/offline-run-*/files/media/table/heads/fidelity_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["head", "dim", "spearman", "cosine"]
    assert [row[:2] for row in data["data"]] == [["fc1", 384], ["64", 64], ["32", 32]]
    assert [round(row[2], 4) for row in data["data"]] == [0.9, 0.8, 0.7]  # logged as float32
    (record,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")  # the curve: a custom chart over that table
    # wandb-core writes the record in its own process and may still be flushing when finish() returns (seen with
    # two pytest workers: only the file's header was there): wait for it, a minute at most.
    deadline = time.monotonic() + 60
    while b"heads/spearman_vs_dim_table" not in record.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"heads/spearman_vs_dim_table" in record.read_bytes()
