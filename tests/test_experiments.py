"""The experiment scripts that the docs show, run through their command lines."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = REPO.parent / "shared" / "data" / "dev"


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


def _student_run(run_dir: Path, minilm: str, fc1_dim: int, corpus_file: str | None = None) -> None:
    """A stage-1 student; with ``corpus_file``, also the config train.py saves beside it (12 held-out texts)."""
    from jasper.models.student import Student
    from jasper.storage.checkpoints import save_student

    student = Student(minilm, fc1_dim=fc1_dim, num_layers=1, max_length=32)
    save_student(student, run_dir / "stage1" / "student.pt")
    if corpus_file is not None:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        overrides = [
            "experiment=jasper_analogue",
            f"paths.run_dir={run_dir}",
            "data=local_files",
            f"data.source.paths=[{corpus_file}]",
            "data.val_texts=12",
        ]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        (run_dir / "stage1" / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / "stage1" / ".hydra" / "config.yaml")


def _fidelity(run_dir: Path) -> subprocess.CompletedProcess:
    if not DEV_DATA.is_dir():
        pytest.skip(f"the dev sets are not at {DEV_DATA}")
    from jasper.models.packaged import MPNET, packaged_model

    try:
        packaged_model(MPNET)
    except ImportError:
        pytest.skip("the mpnet extra is not installed (make install-mpnet)")
    command = ["experiments/jasper_analogue_fidelity.py", str(run_dir), "--dev-dir", str(DEV_DATA)]
    return subprocess.run(
        [sys.executable, *command, "--max-pairs", "12"], cwd=REPO, capture_output=True, text=True
    )


def test_jasper_analogue_fidelity_scores_each_teacher_slice(tmp_path, minilm_path):
    _student_run(tmp_path / "run", minilm_path, fc1_dim=768 + 384)
    result = _fidelity(tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "No held-out table: " in result.stdout  # a run without train.py's saved config, named
    table = result.stdout[result.stdout.index("| vectors |") : result.stdout.index("No held-out")]
    table = table.strip().splitlines()[2:]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table}
    assert list(rows) == [
        "all-mpnet-base-v2",
        "all-MiniLM-L6-v2 (init)",
        "target: both concatenated",
        "stage1 FC1",
        "stage1 FC1[:768] (mpnet part)",
        "stage1 FC1[768:] (init part)",
    ]
    # The init's row, recomputed here without the script: MiniLM's own vectors, cosine, Spearman on the 12 pairs.
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from jasper.evaluation.loaders import load_sts_tsv

    minilm = SentenceTransformer(minilm_path, device="cpu")
    for column, file in enumerate(["stsb-dev.tsv", "sickr.tsv"]):
        pairs = load_sts_tsv(DEV_DATA / file)[:12]
        a, b = (
            minilm.encode([getattr(p, side) for p in pairs], normalize_embeddings=True)
            for side in ("s1", "s2")
        )
        expected = spearmanr((a * b).sum(-1), [p.score for p in pairs]).statistic
        assert float(rows["all-MiniLM-L6-v2 (init)"][column]) == pytest.approx(expected, abs=2e-4), file
    to_mpnet, to_init = (float(c.rstrip(" |")) for c in rows["stage1 FC1"][2:])
    assert abs(to_mpnet) < 0.5 and abs(to_init) < 0.5  # a random FC1 agrees with neither teacher


def test_jasper_analogue_fidelity_refuses_another_fc1(tmp_path, minilm_path):
    _student_run(tmp_path / "run", minilm_path, fc1_dim=384)
    result = _fidelity(tmp_path / "run")
    assert result.returncode != 0
    assert "FC1 is 384-d, not the 1152-d of mpnet + MiniLM" in result.stderr


def test_jasper_analogue_fidelity_compares_held_out_training_texts(tmp_path, minilm_path, corpus_file):
    """With the run's saved config, a second table gives each slice's fidelity on the run's own held-out
    texts beside the dev sentences' (the same values as the first table's FC1 row)."""
    _student_run(tmp_path / "run", minilm_path, fc1_dim=768 + 384, corpus_file=corpus_file)
    result = _fidelity(tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "Fidelity on the run's 12 held-out training texts" in result.stdout
    dev_row = next(line for line in result.stdout.splitlines() if line.startswith("| stage1 FC1 |"))
    held_out_row = result.stdout.strip().splitlines()[-1]
    assert held_out_row.startswith("| stage1 |")
    held_mpnet, dev_mpnet, held_init, dev_init = (float(c) for c in held_out_row.strip("| ").split(" | ")[1:])
    assert [dev_mpnet, dev_init] == [float(c) for c in dev_row.strip("| ").split(" | ")[3:]]
    assert abs(held_mpnet) < 0.5 and abs(held_init) < 0.5  # a random FC1 agrees with neither teacher
