"""Evaluation during training (conf/dev_eval/, jasper/evaluation/during_training.py), through train.py: every head
on the dev subsets every N steps, logged to the CSV logger, the best student kept by a named metric."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jasper.evaluation.during_training import DevEvaluation

REPO = Path(__file__).resolve().parents[1]


def _data(root: Path) -> Path:
    (root / "beir" / "qrels").mkdir(parents=True)
    pairs = [
        ("A man plays a guitar.", "A man is playing music.", 4.2),
        ("A dog runs.", "Stocks fell.", 0.2),
        ("Kids play football.", "Children play soccer.", 4.0),
        ("A plane takes off.", "A chef cooks.", 0.5),
    ]
    (root / "sts.tsv").write_text(
        "score\tsentence1\tsentence2\n" + "".join(f"{c}\t{a}\t{b}\n" for a, b, c in pairs)
    )
    docs = ["Paris is the capital of France.", "The guitar has six strings.", "Pasta is boiled in water."]
    (root / "beir" / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    queries = {"q0": "capital of France", "q1": "strings of a guitar"}
    (root / "beir" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    (root / "beir" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    return root


def test_train_py_evaluates_every_n_steps_logs_each_head_and_keeps_the_best(tmp_path):
    """python train.py stage=1 dev_eval=quick, 4 steps of debug=fast's size (with its CSV logger), every 2:
    evaluations at steps 2 and 4 (the end adds none), each head's scores in metrics.csv with dev/seconds, the best
    student and best.json written."""
    data = _data(tmp_path / "dev")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    args = [
        f"paths.run_dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "stages.stage1={steps: 4, batch_size: 4, val_every: 4, checkpoint_every: 4, warmup_steps: 0}",
        "data.val_texts=8",
        "data.max_texts=32",
        "callbacks.checkpoint=null",
        "+trainer.enable_checkpointing=false",
        "dev_eval=quick",
        "callbacks.dev_eval.every_n_steps=2",
        "callbacks.dev_eval.monitor=dev_fc1/sts",
        f"callbacks.dev_eval.sets={{data_dir: {data}, sts: [sts.tsv], retrieval: [beir]}}",
    ]
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stage = tmp_path / "run" / "stage1"
    with open(next((stage / "logs").rglob("metrics.csv"))) as file:
        rows = [r for r in csv.DictReader(file) if r.get("dev/seconds")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    heads = ["fc1", "256", "128", "64"]  # the embedded default's heads
    for row in rows:
        for head in heads:
            assert (
                -1 <= float(row[f"dev_{head}/sts"]) <= 1 and 0 <= float(row[f"dev_{head}/beir_ndcg@10"]) <= 1
            )
    best = json.loads((stage / "best" / "best.json").read_text())
    scores = [float(r["dev_fc1/sts"]) for r in rows]
    assert best["score"] == pytest.approx(max(scores)) and best["step"] == [2, 4][scores.index(max(scores))]
    assert (stage / "best" / "student.pt").is_file()


def test_settings_that_cannot_work_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        DevEvaluation({}, every_n_steps=0)
    with pytest.raises(ValueError, match="monitor needs callbacks.dev_eval.best_path"):
        DevEvaluation({}, monitor="dev_fc1/sts")
