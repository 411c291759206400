"""``experiment=jasper_paper``, unchanged, on hub replicas of everything it reads (jasper.data.replicas: both
teachers, stella as the student, the SigLIP tower, fineweb-edu, embedding-training-data, Infinity-MM), offline on
CPU: precompute, stages 1 -> 2 -> 3 -> 4 and export through the real entry points, at the paper's sizes (FC1 12288,
heads 1024/512/256, max length 512), with a wall-time table per phase. Also: the datasets' replicas have the real
layouts, and offline a dataset is read from the cache or a mirror folder, never silently skipped."""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import runpy
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from jasper.data.hub_files import local_mirror, local_url, mirror_files
from jasper.data.image_sources import HubImageCaptions
from jasper.data.mix import JsonRows
from jasper.data.replicas import (
    EMBEDDING_DATA,
    EMBEDDING_FILES,
    FINEWEB_EDU,
    INFINITY_MM,
)
from jasper.data.sources import HubDataset
from jasper.models.replicas import SIGLIP_SHAPE, replica_env
from jasper.storage.checkpoints import read_student

REPO = Path(__file__).resolve().parents[1]
FINEWEB_COLUMNS = [
    "text",
    "id",
    "dump",
    "url",
    "date",
    "file_path",
    "language",
    "language_score",
    "token_count",
    "score",
    "int_score",
]
# Everything the run changes in experiment=jasper_paper: the debug group (2 steps of batch 4 per stage, 32 texts,
# 40 pairs, no logger), 60 rows drawn for the mix (the replicas' 48 fineweb-edu rows are its 80%), a CPU trainer,
# where outputs go, and the tower's width and depth (SIGLIP_SHAPE: so400m itself takes ~30 s to build and ~23 s per
# 384-px image on one CPU core). docs/teachers.md shows these commands.
RUN = ["experiment=jasper_paper", "debug=fast", "data.source.total=60", "trainer=cpu", "trainer.devices=1"]
TOWER = [f"+vision.timm_kwargs.{key}={value}" for key, value in SIGLIP_SHAPE.items()]
DOCS = REPO / "docs" / "teachers.md"


def snapshot(cache: Path, repo_id: str) -> Path:
    (folder,) = (cache / f"datasets--{repo_id.replace('/', '--')}" / "snapshots").iterdir()
    return folder


def test_the_dataset_replicas_have_the_hub_layouts(on_teacher_replicas):
    import pyarrow.parquet as pq

    fineweb = snapshot(on_teacher_replicas, FINEWEB_EDU)
    builder, files = mirror_files(fineweb, "sample-10BT", "train", None)
    assert builder == "parquet" and [Path(f).relative_to(fineweb).as_posix() for f in files] == [
        "sample/10BT/000_00000.parquet",
        "sample/10BT/001_00000.parquet",
    ]
    assert pq.read_schema(files[0]).names == FINEWEB_COLUMNS
    embedding = snapshot(on_teacher_replicas, EMBEDDING_DATA)
    assert sorted(p.name for p in embedding.glob("*.jsonl.gz")) == sorted(EMBEDDING_FILES)
    rows = list(JsonRows([f"hf://datasets/{EMBEDDING_DATA}/*.jsonl.gz"]))  # offline: read from the snapshot
    assert {type(r).__name__ for r in rows} == {"list", "dict"} and len(rows) == 4 * len(EMBEDDING_FILES)
    assert {tuple(sorted(r)) for r in rows if isinstance(r, dict)} == {
        ("set",),
        ("pos", "query"),
        ("neg", "pos", "query"),
    }
    builder, files = mirror_files(snapshot(on_teacher_replicas, INFINITY_MM), "stage1", "train", None)
    assert builder == "webdataset" and [Path(f).parent.parent.name for f in files] == ["stage1"]


def test_offline_hub_sources_read_the_cache_or_a_mirror_and_name_the_download_otherwise(
    on_teacher_replicas, tmp_path
):
    texts = list(HubDataset(FINEWEB_EDU, "sample-10BT", max_rows=5))
    mirror = tmp_path / "fineweb"
    shutil.copytree(
        snapshot(on_teacher_replicas, FINEWEB_EDU), mirror
    )  # a plain folder, as hf download --local-dir
    assert list(HubDataset("someone/else", "sample-10BT", max_rows=5, mirror=str(mirror))) == texts
    assert len(texts) == 5 and all(len(t) >= 200 for t in texts)
    pairs = list(
        HubImageCaptions(
            INFINITY_MM,
            "stage1",
            image_column="jpg",
            caption_column="json.conversations",
            max_pairs=3,
            cache_dir=str(tmp_path),
        )
    )
    assert len(pairs) == 3 and all(Path(p).is_file() and c.strip() for p, c in pairs)
    with pytest.raises(
        FileNotFoundError, match=r"not in the Hugging Face cache .*\(hf download owner/missing"
    ):
        local_mirror("owner/missing")
    with pytest.raises(
        FileNotFoundError, match=r"not in the Hugging Face cache .*\(hf download owner/missing"
    ):
        local_url("hf://datasets/owner/missing/*.jsonl.gz")
    with pytest.raises(
        ValueError, match=r"no config 'sample-100BT' .*\(configs: \['default', 'sample-10BT'\]"
    ):
        list(HubDataset(FINEWEB_EDU, "sample-100BT"))
    with pytest.raises(FileNotFoundError, match=r"no data file for config 'default'.*--include PATTERN"):
        list(HubDataset(FINEWEB_EDU, "default"))  # the replica, as a partial download, holds sample/10BT only


def entry(script: str, args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run an entry point; ``(start, end, CPU seconds)``: wall-clock times (file times are compared with them) and
    the user + system time it used, which a busy machine inflates less than the wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    result = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, f"{script} {args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return start, end, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def mtime(path: Path) -> float:
    return path.stat().st_mtime


def last_write(folder: Path) -> float:
    return max(mtime(p) for p in folder.rglob("*") if p.is_file() and ".hydra" not in p.parts)


def phase_table(rows: list[tuple[str, str, float]]) -> str:
    lines = ["| phase | what it processed | wall s |", "| --- | --- | ---: |"]
    lines += [f"| {phase} | {what} | {seconds:.1f} |" for phase, what, seconds in rows]
    return "\n".join(lines)


def test_jasper_paper_runs_unchanged_on_the_replicas(tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"  # built by the documented command, in this process (its imports are already paid)
    monkeypatch.setattr(sys, "argv", ["python -m jasper.data.replicas", str(hub)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported, as intended
        runpy.run_module("jasper.data.replicas", run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "run jasper on them with: " + " ".join(
        f"{k}={v}" for k, v in replica_env(hub).items()
    )
    replicas = [line.split(": ")[0] for line in printed[:-1] if ": /" in line]  # a library's log line aside
    assert sorted(replicas) == sorted(
        [  # 2 teachers, the tower, 3 datasets (then the environment)
            "NovaSearch/stella_en_1.5B_v5",
            "nvidia/NV-Embed-v2",
            "timm/vit_so400m_patch14_siglip_384.webli",
            "HuggingFaceFW/fineweb-edu",
            "sentence-transformers/embedding-training-data",
            "BAAI/Infinity-MM",
        ]
    )
    env = {
        **os.environ,
        **replica_env(hub),
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    paths = [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    documented = DOCS.read_text()  # the commands docs/teachers.md shows are these, with its folders
    for script, args in (
        ("precompute.py", RUN),
        ("train.py --multirun stage=1,2,3,4", [*RUN, "paths.run_dir"]),
    ):
        assert f"python {script} {' '.join(args)}" in documented, (
            f"docs/teachers.md lacks: python {script} {args}"
        )
    assert " ".join(TOWER) in documented and "python -m jasper.data.replicas /tmp/hub" in documented
    pre = entry("precompute.py", [*RUN, *paths], env)
    train = entry("train.py", ["--multirun", "stage=1,2,3,4", *RUN, *paths, *TOWER], env)
    (job,) = {p.parent for p in (tmp_path / "run").glob("*/stage1")}  # the sweep's one folder (its overrides)
    stages = {k: job / f"stage{k}" for k in (1, 2, 3, 4)}
    export = entry(
        "export.py",
        [
            f'ckpt="{stages[4] / "student.pt"}"',
            f"out={tmp_path / 'export'}",
            f"hydra.run.dir={tmp_path / 'export_logs'}",
        ],
        env,
    )

    # The paper's sizes, from what the run wrote.
    (corpus,) = (tmp_path / "cache").glob("corpus-*")
    teachers = {p.parent.name: json.loads(p.read_text()) for p in corpus.glob("*/manifest.json")}
    assert sorted(teachers) == ["NV-Embed-v2", "stella_en_1.5B_v5-8192-d"]
    assert {name: m["teacher"]["dim"] for name, m in teachers.items()} == {
        "NV-Embed-v2": 4096,
        "stella_en_1.5B_v5-8192-d": 8192,
    }
    student = read_student(stages[3] / "student.pt").config
    assert (student["fc1_dim"], list(student["mrl_dims"]), student["max_length"]) == (
        12288,
        [1024, 512, 256],
        512,
    )
    assert student["model_name_or_path"] == "NovaSearch/stella_en_1.5B_v5"
    for k in (2, 3, 4):  # each stage started from the one before (after a failed one: a warning instead)
        log = (stages[k] / "train.log").read_text()
        assert f"student initialised from {stages[k - 1] / 'student.pt'}" in log, log
    # The texts are the two datasets' replicas in the paper's 80/20 shares, the pairs Infinity-MM's.
    (pre_log,) = (tmp_path / "cache" / "logs").glob("*/precompute.log")
    (mixed,) = re.findall(r"mixed \d+ rows: (\{.*\})", pre_log.read_text())
    assert ast.literal_eval(mixed) == {"fineweb_edu": 48, "embedding_data": 12}
    (pairs,) = (tmp_path / "cache").glob("hub_images-*/index.jsonl")
    assert len(pairs.read_text().splitlines()) == 24
    recall = json.loads((stages[4] / "image_retrieval.json").read_text())
    assert recall and (stages[4] / "vision.pt").is_file()
    exported = json.loads((tmp_path / "export" / "jasper_export.json").read_text())
    assert {h: v["dim"] for h, v in exported["heads"].items()} == {
        "fc1": 12288,
        "1024": 1024,
        "512": 512,
        "256": 256,
    }
    assert (tmp_path / "export" / "multimodal").is_dir()

    # Per-phase wall time: each phase between the files that open and close it.
    (pre_config,) = (tmp_path / "cache" / "logs").glob("*/.hydra/config.yaml")
    texts = json.loads((corpus / "corpus.json").read_text())
    rows = [
        ("precompute.py start-up (imports, compose)", "", mtime(pre_config) - pre[0]),
        (
            "precompute: texts (read, clean, augment)",
            f"{texts['rows']} texts",
            mtime(corpus / "corpus.json") - mtime(pre_config),
        ),
    ]
    for name in sorted(teachers):
        folder = corpus / name
        rows.append(
            (
                f"precompute: {name}",
                f"{teachers[name]['rows']} texts",
                mtime(folder / "manifest.json") - mtime(folder / "fingerprint.json"),
            )
        )
    rows.append(
        ("train.py start-up (imports, compose)", "", mtime(stages[1] / ".hydra" / "config.yaml") - train[0])
    )
    for k, folder in stages.items():
        what = "2 steps x 4 texts" if k < 4 else "2 steps x 4 pairs, held-out recall"
        rows.append((f"stage {k}", what, last_write(folder) - mtime(folder / ".hydra" / "config.yaml")))
    rows.append(("export.py (whole process)", "4 heads + tower", export[1] - export[0]))
    table = phase_table(rows)
    processes = ", ".join(
        f"{name} {end - start:.0f} s wall / {cpu:.0f} s CPU"
        for name, (start, end, cpu) in (("precompute.py", pre), ("train.py", train), ("export.py", export))
    )
    print(f"\nexperiment=jasper_paper on the replicas, per phase:\n{table}\nprocesses: {processes}")
    assert all(seconds > 0 for _, _, seconds in rows), table
    assert sum(s for _, _, s in rows[:4]) <= pre[1] - pre[0] + 0.5, table  # the phases fit in their process
    assert sum(s for _, _, s in rows[4:-1]) <= train[1] - train[0] + 0.5, table
