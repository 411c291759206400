"""precompute.py end to end on local files: the cache it writes is the one training reads, verify catches damage."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.storage.cache import TeacherCache, verify_cache_dir
from jasper.training.precompute import precompute
from tests.test_disk import (
    HOLDER,  # a process holding a build lock (a plain filelock, as another precompute would)
)

CONF = Path(__file__).resolve().parents[1] / "conf"
REPO = CONF.parent


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rows_file(tmp_path, docstrings):
    """Real texts plus rows the DataModule must reject (and count): empty, non-text, duplicate, over-long."""
    rows = [*docstrings[:40], "", "   ", None, 17, docstrings[0], "word " * 500]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return path


def overrides(tiny_bert, rows_file, cache_dir):
    teacher = f"{{_target_:jasper.models.teachers.HuggingFaceTeacher,model_name_or_path:'{tiny_bert}',name:tiny,max_length:32}}"
    return [
        "data=local_files",
        f"data.source.paths=[{rows_file}]",
        "data.val_texts=6",
        "+data.max_chars=1000",
        "data.shard_rows=16",
        f"teachers.teachers=[{teacher}]",
        "teachers.batch_size=4",
        f"paths.cache_dir={cache_dir}",
        "paths.output_dir=/nonexistent/stage1",
        "stages.stage1.batch_size=4",
    ]


def compose_config(name, extra):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=extra)


def test_precompute_writes_the_cache_training_reads(tiny_bert, rows_file, tmp_path, caplog, docstrings):
    args = overrides(tiny_bert, rows_file, tmp_path / "cache")
    with caplog.at_level(logging.INFO):
        root = precompute(compose_config("precompute", args))
    corpus = json.loads((root / "corpus.json").read_text())
    long = 1 + sum(len(t) > 1000 for t in docstrings[:40])
    assert corpus["rejected"] == {"empty": 2, "non-text": 2, "duplicate": 1, "truncated": long}
    assert "rejected 5 row(s)" in caplog.text
    # Training composes the same groups, finds the cache and encodes nothing.
    cfg = compose_config("train", args)
    teachers = instantiate(cfg.teachers)
    assert teachers.online is False
    data = instantiate(cfg.data, teachers=teachers, tokenize=lambda texts: {"n": torch.tensor([len(texts)])})
    teachers.teachers[0].encode = None  # any call would fail: vectors must come from the cache
    caplog.clear()
    with caplog.at_level(logging.INFO):
        data.setup("fit")
    assert "encoding" not in caplog.text and str(root) in caplog.text
    # verify=true passes, then fails on a damaged shard.
    precompute(compose_config("precompute", [*args, "verify=true"]))
    shard = next((root / "tiny").glob("shard-00001.npy"))
    array = np.load(shard)
    array[0, 0] = np.nan
    np.save(shard, array)
    with pytest.raises(ValueError, match="problem"):
        precompute(compose_config("precompute", [*args, "verify=true"]))


def test_online_teachers_write_no_cache(tiny_bert, rows_file, tmp_path):
    cfg = compose_config(
        "train", [*overrides(tiny_bert, rows_file, tmp_path / "cache"), "teachers.online=true"]
    )
    teachers = instantiate(cfg.teachers)
    data = instantiate(cfg.data, teachers=teachers, tokenize=lambda texts: {})
    data.setup("fit")
    assert isinstance(data.train_set.teacher_vectors, torch.Tensor)
    assert not (tmp_path / "cache").exists()


def corpus_files(cache_dir):
    """Every file of the one corpus folder under ``cache_dir`` (relative path -> bytes), the lock file aside."""
    (root,) = Path(cache_dir).glob("corpus-*")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".build.lock"
    }


def test_two_torchrun_processes_write_the_single_process_cache_byte_for_byte(tiny_bert, rows_file, tmp_path):
    """The documented command (docs/cache.md), ``torchrun --standalone --nproc_per_node=2 precompute.py ...``: two
    CPU processes over gloo share the shards and write the cache one process writes, byte for byte: every shard,
    ids.npy, corpus.json, the fingerprint and the one manifest. Then ``verify=all`` on it, damaged: exit status 1.
    (``python precompute.py`` alone, as a command, runs in the waiting-build test below.)"""
    precompute(compose_config("precompute", overrides(tiny_bert, rows_file, tmp_path / "cache")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ranks = subprocess.run(
        [*torchrun, "precompute.py", *overrides(tiny_bert, rows_file, tmp_path / "torchrun")],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ranks.returncode == 0, ranks.stdout[-3000:] + ranks.stderr[-3000:]
    assert "text/s" in ranks.stderr  # the progress bars
    for rank in (0, 1):  # each encoded its share
        assert re.search(rf"encoding \d+ text\(s\) into .* for tiny \(rank {rank} of 2\)", ranks.stdout)
    files = corpus_files(tmp_path / "cache")
    assert len([name for name in files if name.startswith("tiny/shard-")]) >= 2
    assert corpus_files(tmp_path / "torchrun") == files
    # verify=all: every corpus under paths.cache_dir (precompute's own log folder there is not one), no teacher.
    (root,) = (tmp_path / "torchrun").glob("corpus-*")
    assert verify_cache_dir(tmp_path / "torchrun") == 0
    (root / "tiny" / "manifest.json").write_text("{")  # a damaged manifest: named, exit status 1
    verify = [sys.executable, "precompute.py", "verify=all", f"paths.cache_dir={tmp_path / 'torchrun'}"]
    check = subprocess.run(verify, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 1, check.stderr[-3000:]
    assert f"PROBLEM {root.name}/tiny/manifest.json: damaged" in check.stdout
    assert "cache OK" not in check.stdout


def test_rows_that_are_not_utf8_are_counted_with_the_other_rejected_rows(tiny_bert, rows_file, tmp_path):
    rows_file.write_bytes(rows_file.read_bytes() + '{"text": "caf\u00e9 cr\u00e8me"}\n'.encode("latin-1"))
    root = precompute(compose_config("precompute", overrides(tiny_bert, rows_file, tmp_path / "cache")))
    rejected = json.loads((root / "corpus.json").read_text())["rejected"]
    assert rejected["invalid UTF-8"] == 1 and rejected["non-text"] == 2  # beside the rows rejected before


def test_a_second_precompute_says_it_waits_and_claims_no_work_it_did_not_do(tiny_bert, rows_file, tmp_path):
    """precompute.py started while another build holds the teacher's lock: it logs that it waits; the other build
    finishes the folder meanwhile; this one then encodes nothing and says so, logging no encoding."""
    args = overrides(tiny_bert, rows_file, tmp_path / "cache")
    root = precompute(compose_config("precompute", args))
    folder = root / "tiny"
    aside = tmp_path / "finished"
    aside.mkdir()
    for file in folder.iterdir():  # the other build has not written its shards yet
        if file.name != ".build.lock":
            file.rename(aside / file.name)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder / ".build.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "second.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    second = None
    try:
        assert holder.stdout.readline().strip() == "held"
        with log.open("w") as out:
            second = subprocess.Popen(
                [sys.executable, "precompute.py", *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 300
            while (
                "waiting for" not in log.read_text() and second.poll() is None and time.monotonic() < deadline
            ):
                time.sleep(0.5)
            assert "waiting for the tiny vectors" in log.read_text(), log.read_text()[-3000:]
            for file in aside.iterdir():  # the other build finishes, then lets go
                file.rename(folder / file.name)
            holder.stdin.close()
            assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for process in (holder, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert (
        f"waiting for the tiny vectors of {root} (lock {folder / '.build.lock'}) held by another process"
        in text
    )
    assert f"the tiny vectors of {root} were finished by another process" in text
    assert "encoding" not in text and "encoded" not in text, text[-3000:]
    assert TeacherCache(root).verify() == []
