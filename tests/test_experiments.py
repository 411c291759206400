"""The experiment scripts that the docs show, run through their command lines."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def write_metrics(stage_dir: Path, rows: list[dict]) -> None:
    """A Lightning CSVLogger file: one column per key seen, empty cells where a row lacks the key."""
    path = stage_dir / "logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    keys = sorted({k for row in rows for k in row})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerows(rows)


def test_learning_curves_draws_every_stage(tmp_path):
    for stage, steps in (("stage1", 30), ("stage2", 60)):
        rows = [{"epoch": 0, "step": s, "train/loss": 10.0 / (s + 1)} for s in range(steps)]
        rows += [{"step": s, "val/spearman_fc1": 0.5 + s / 200, "val/spearman_64": 0.4} for s in (9, 19, 29)]
        write_metrics(tmp_path / "run" / stage, rows)
    out = tmp_path / "curves.png"
    result = subprocess.run(
        [sys.executable, "experiments/learning_curves.py", str(tmp_path / "run"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout.strip() == str(out)


def test_learning_curves_names_a_run_without_logs(tmp_path):
    (tmp_path / "run" / "stage1").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "experiments/learning_curves.py", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "no trained stage with CSV logs" in result.stderr


@pytest.mark.parametrize("window", [1, 3, 10])
def test_smoothing_is_a_trailing_mean(window):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        from learning_curves import smooth
    finally:
        sys.path.pop(0)
    values = [float(v * v % 7) for v in range(25)]
    expected = [sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))]
    assert smooth(values, window) == pytest.approx(expected, abs=1e-12)
