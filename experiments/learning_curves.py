"""Learning curves of a run's stages, from the CSV logs that `train.py` writes (logger=csv, the default).

    python experiments/learning_curves.py outputs/mini_jasper            # -> outputs/mini_jasper/curves.png
    python experiments/learning_curves.py outputs/demo --out demo.png

One row of panels: the training loss (smoothed over `--window` logged steps), and the held-out fidelity that
validation logs (val/spearman_<head>: Spearman between the student's and the teacher's pairwise similarities on
data.val_texts held-out texts; val/cosine_fc1: mean cosine to the teacher vector). Stages follow each other on one
step axis, separated by dashed lines, so a curve that flattens shows where more steps stop paying.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def read_metrics(stage_dir: Path) -> list[dict[str, float]]:
    """The rows of the stage's newest metrics.csv, numbers only (Lightning writes empty cells for absent keys)."""
    logs = sorted(
        stage_dir.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    if not logs:
        raise FileNotFoundError(
            f"no logs/version_*/metrics.csv under {stage_dir}: was it trained with logger=csv?"
        )
    with logs[-1].open() as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)
        ]


def series(rows: list[dict[str, float]], key: str, offset: int) -> tuple[list[int], list[float]]:
    points = [(int(r["step"]) + offset, r[key]) for r in rows if key in r and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(run_dir: Path, out: Path, window: int = 20) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted(p for p in run_dir.glob("stage[0-9]") if list(p.glob("logs/version_*/metrics.csv")))
    if not stages:
        raise FileNotFoundError(
            f"no trained stage with CSV logs under {run_dir} (expected {run_dir}/stageN/logs/)"
        )
    figure, (loss_axis, val_axis) = plt.subplots(1, 2, figsize=(12, 4.2))
    offset = 0
    for stage in stages:
        rows = read_metrics(stage)
        steps, loss = series(rows, "train/loss", offset)
        loss_axis.plot(steps, smooth(loss, window), label=stage.name)
        heads = sorted({k.split("_", 1)[1] for r in rows for k in r if k.startswith("val/spearman_")})
        if stage.name != "stage3":  # the heads train in stage 3 only; before it they sit at their init
            heads = [h for h in heads if h == "fc1"]
        for head in heads:
            x, y = series(rows, f"val/spearman_{head}", offset)
            val_axis.plot(x, y, marker="o", markersize=3, label=f"{stage.name} spearman {head}")
        x, y = series(rows, "val/cosine_fc1", offset)
        if x:
            val_axis.plot(x, y, linestyle=":", marker="s", markersize=3, label=f"{stage.name} cosine fc1")
        last = max((int(r["step"]) for r in rows), default=0)
        offset += last + 1
        for axis in (loss_axis, val_axis):
            axis.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
    loss_axis.set(
        xlabel="step (stages in sequence)", ylabel=f"train/loss (mean of {window} logs)", yscale="log"
    )
    val_axis.set(xlabel="step (stages in sequence)", ylabel="held-out fidelity to the teacher")
    loss_axis.legend()
    val_axis.legend(fontsize=7, ncol=2)
    figure.suptitle(f"{run_dir.name}: training loss and held-out fidelity")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dir", type=Path, help="a run folder holding stage1/, stage2/, ... (outputs/<run_name>)"
    )
    parser.add_argument("--out", type=Path, help="the PNG to write (default: <run_dir>/curves.png)")
    parser.add_argument("--window", type=int, default=20, help="logged steps averaged in the loss curve")
    args = parser.parse_args()
    print(plot(args.run_dir, args.out or args.run_dir / "curves.png", args.window))


if __name__ == "__main__":
    main()
