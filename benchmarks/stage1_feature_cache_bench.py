"""Stage-1 training steps/s with and without the feature cache (stages.stage1.feature_cache), same run.

    python benchmarks/stage1_feature_cache_bench.py [--steps 30] [--batch 32] [--layers 3] [--max-length 128]

Student: the packaged all-MiniLM-L6-v2 cut to ``--layers`` layers, FC1 to a 768-d random "teacher" (cached
vectors, so the teachers cost nothing here). Texts: standard-library docstrings. Steps/s is timed over the
training loop only (Lightning's fit, after setup); building the feature cache is reported apart: it is paid once
per (encoder weights, texts) and reused by every later stage-1 run.
"""

from __future__ import annotations

import argparse
import functools
import sysconfig
import tempfile
import time
from pathlib import Path


class Timer:
    def __init__(self) -> None:
        self.start = self.stop = 0.0

    def callback(self):
        import lightning as L

        timer = self

        class _Timer(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, index):
                if index == 1:  # skip the first step (warm-up)
                    timer.start = time.perf_counter()

            def on_train_end(self, trainer, module):
                timer.stop = time.perf_counter()

        return _Timer()


def run(feature_cache: bool, args, texts, cache_dir) -> tuple[float, float]:
    import lightning as L
    import torch

    from jasper.core.losses import DistillLoss
    from jasper.data.datamodule import TextDistillDataModule
    from jasper.models.ensemble import TeacherEnsemble
    from jasper.models.packaged import packaged_minilm
    from jasper.models.student import Student
    from jasper.models.teachers import HuggingFaceTeacher
    from jasper.training.stages.stage1 import Stage1

    path = packaged_minilm()
    teacher = HuggingFaceTeacher(path, num_layers=1, max_length=16, name="cheap-teacher")
    L.seed_everything(0)
    student = Student(path, fc1_dim=teacher.dim, num_layers=args.layers, max_length=args.max_length)
    data = TextDistillDataModule(
        texts,
        TeacherEnsemble([teacher], batch_size=64),
        tokenize=student.tokenize,
        batch_size=args.batch,
        val_texts=16,
        cache_dir=cache_dir,
        features=student if feature_cache else None,
    )
    started = time.perf_counter()
    data.setup("fit")
    setup_s = time.perf_counter() - started
    module = Stage1(student, DistillLoss(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    timer = Timer()
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer.callback()],
    )
    trainer.fit(module, datamodule=data)
    return (args.steps - 1) / (timer.stop - timer.start), setup_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from jasper.data.datamodule import clean_rows
    from jasper.data.sources import PythonDocstrings

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, _ = clean_rows(PythonDocstrings(root=str(stdlib / "email")))
    texts = texts[: args.steps * args.batch + 16]
    with tempfile.TemporaryDirectory() as cache_dir:
        run(False, args, texts, cache_dir)  # builds the teacher cache, warms everything up
        plain, _ = run(False, args, texts, cache_dir)
        cached, build_s = run(True, args, texts, cache_dir)
        again, reuse_s = run(True, args, texts, cache_dir)
    print(
        f"{len(texts)} texts, batch {args.batch}, {args.layers}-layer MiniLM student, max_length {args.max_length}"
    )
    print("| stage 1 | steps/s | ratio | setup (s) |")
    print("|---|---:|---:|---:|")
    print(f"| encoder runs every step | {plain:.2f} | 1.00 | - |")
    print(f"| feature cache, first run (builds it) | {cached:.2f} | {cached / plain:.1f} | {build_s:.1f} |")
    print(f"| feature cache, later run (reads it) | {again:.2f} | {again / plain:.1f} | {reuse_s:.1f} |")


if __name__ == "__main__":
    main()
