"""Evaluation during training: a Lightning callback that scores the student's every head on dev STS and retrieval
subsets every N optimiser steps, logs the scores to the run's loggers (CSV, wandb: ``dev_<head>/<set>``, a
section per head) and can keep the best student by a named metric.

It lives in the evaluation layer (it runs evaluate.py's own STS and retrieval code), and training never imports
it: ``conf/dev_eval/`` names it by ``_target_`` into the run's callbacks (``python train.py dev_eval=quick``).

Cost: every evaluation encodes each distinct text of the subsets once for all heads (one pooled pass, then every
head's projection), in eval mode and without gradients; the seconds it took are logged as ``dev/seconds`` and the
share of the stage's wall time spent evaluating is logged at the end (``dev/share_of_time``). On the quick
subsets (1,000 STS pairs' sentences and 500 documents) one evaluation of the MiniLM-L3 student's four heads took 21 s
on 2 CPU cores shared with other jobs (experiments/serving.md): evaluate every few hundred steps.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch

from jasper.core.disk import atomic_write
from jasper.evaluation.models import StudentHeads, VectorCache
from jasper.evaluation.retrieval import evaluate_retrieval
from jasper.evaluation.sets import load_sets, with_set_specs
from jasper.evaluation.sts import evaluate_sts
from jasper.storage.checkpoints import save_student

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def metric_key(head: str, metric: str) -> str:
    """``dev_<head>/<set>`` (retrieval: ``dev_<head>/<set>_ndcg@10``): wandb groups panels by the part before the
    first slash, so each head gets its own section."""
    return f"dev_{head}/{metric.replace(' ', '_')}"


class DevEvaluation(L.Callback):
    """Score every head on the sets of ``sets`` (an ``eval`` config as conf/evaluate/eval/: ``data_dir``, ``sts``,
    ``retrieval``, ``max_length``, ``seed``, subsets) every ``every_n_steps`` optimiser steps, and once at the end.

    ``monitor`` (a logged key, e.g. ``dev_fc1/stsb-dev``; null: none) and ``mode`` (``max``/``min``) pick the best
    evaluation; its student is written to ``best_path`` (a ``student.pt``, as every stage writes, so export.py and
    evaluate.py read it) with ``best.json`` beside it (step, score, every metric). Evaluation runs on the global
    rank zero only; the other ranks wait at a barrier (ZeRO-3, whose ranks hold parts of the weights, is not
    supported: the stage would have to gather them).
    """

    def __init__(
        self,
        sets: Mapping,
        every_n_steps: int = 200,
        batch_size: int = 64,
        monitor: str | None = None,
        mode: str = "max",
        best_path: str | None = None,
        at_end: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.dev_eval.every_n_steps must be >= 1, got {every_n_steps}")
        if mode not in ("max", "min"):
            raise ValueError(f"callbacks.dev_eval.mode must be max or min, got {mode!r}")
        if monitor and not best_path:
            raise ValueError(
                "callbacks.dev_eval.monitor needs callbacks.dev_eval.best_path (where the best student.pt goes)"
            )
        self.ecfg = with_set_specs(dict(sets))
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.monitor = monitor
        self.mode = mode
        self.best_path = Path(best_path) if best_path else None
        self.at_end = at_end
        self.best: float | None = None
        self.seconds = 0.0
        self.started = 0.0
        self.sets = None
        self.last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:  # read (and subset) once; a missing set fails here, before any step
            self.sets = load_sets(self.ecfg, REPO)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and trainer.global_step != self.last_step:
            self.evaluate(trainer, pl_module)
        wall = time.perf_counter() - self.started
        if trainer.is_global_zero and wall > 0:
            log.info(
                "dev evaluation: %.1f s of %.1f s of training (%.1f%%)",
                self.seconds,
                wall,
                100 * self.seconds / wall,
            )
            for logger in trainer.loggers:  # on_train_end may not self.log: write to the loggers directly
                logger.log_metrics({"dev/share_of_time": self.seconds / wall}, step=trainer.global_step)

    def scores(self, student) -> dict[str, float]:
        """Every head's score on every set, each text encoded once for all heads."""
        model = StudentHeads(student, "student")
        cache = VectorCache(model, self.batch_size)
        metrics: dict[str, float] = {}
        for head in model.heads:
            encode = cache.encoder(head)
            for name, pairs in self.sets.sts.items():
                metrics[metric_key(head, name)] = evaluate_sts(encode, pairs, batch_size=self.batch_size)
            for name, data in self.sets.retrieval.items():
                wanted = list(self.ecfg["retrieval"][name].get("metrics") or ["ndcg@10"])
                ks = sorted({int(m.split("@")[1]) for m in wanted})
                found = evaluate_retrieval(encode, *data, k_values=ks, batch_size=self.batch_size)
                metrics.update({metric_key(head, f"{name} {m}"): found[m] for m in wanted})
        return metrics

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last_step = trainer.global_step
        if trainer.is_global_zero:
            student = pl_module.student
            was_training = student.training
            start = time.perf_counter()
            with torch.no_grad():
                metrics = self.scores(student)
            student.train(was_training)
            took = time.perf_counter() - start
            self.seconds += took
            metrics["dev/seconds"] = took
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            self.keep_best(student, metrics, trainer.global_step)
            log.info("dev evaluation at step %d (%.1f s): %s", trainer.global_step, took, metrics)
        trainer.strategy.barrier("dev_eval")

    def keep_best(self, student, metrics: Mapping[str, float], step: int) -> None:
        if not self.monitor:
            return
        if self.monitor not in metrics:
            raise KeyError(
                f"callbacks.dev_eval.monitor={self.monitor!r} is not logged; choose one of {sorted(metrics)}"
            )
        score = float(metrics[self.monitor])
        better = self.best is None or (score > self.best if self.mode == "max" else score < self.best)
        if not better:
            return
        self.best = score
        save_student(student, self.best_path)
        record = json.dumps(
            {"step": step, "monitor": self.monitor, "score": score, "metrics": dict(metrics)}, indent=2
        )
        atomic_write(self.best_path.with_name("best.json"), lambda f: f.write(record.encode()))
        log.info(
            "dev evaluation: new best %s = %.4f at step %d -> %s", self.monitor, score, step, self.best_path
        )

    def state_dict(self) -> dict:
        return {"best": self.best, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:  # a resumed stage keeps comparing against the best so far
        self.best = state.get("best")
        self.seconds = state.get("seconds", 0.0)
