import json
import multiprocessing
import os
import shutil
import signal
import threading

import numpy as np
import pytest
import torch
import torch.distributed as dist

from jasper.core.disk import exclusive
from jasper.models.ensemble import TeacherEnsemble
from jasper.models.teachers import HuggingFaceTeacher
from jasper.storage.cache import CacheMismatch, TeacherCache, text_ids, verify_cache_dir, verify_tree
from jasper.storage.cache.format import LOCK
from jasper.storage.cache.ranks import Ranks

SHARD_ROWS = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches on a busy machine: one intra-op thread is many times faster (and the same in every process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts(docstrings):
    return docstrings[:70]  # 5 shards of 16 rows (the last one short)


@pytest.fixture(scope="module")
def teacher(tiny_bert):
    return HuggingFaceTeacher(tiny_bert, max_length=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, texts, teacher):
    """An uninterrupted build: the bytes every other build must reproduce."""
    cache = TeacherCache(tmp_path_factory.mktemp("reference"))
    cache.build(texts, [teacher], batch_size=2, shard_rows=SHARD_ROWS, show_progress=False)
    return cache


def shard_bytes(cache, teacher):
    folder = cache.teacher_dir(teacher)
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.npy"))}


def test_cached_rows_are_the_ensembles_vectors_in_float16(reference, texts, teacher):
    reader = reference.reader([teacher])
    direct = TeacherEnsemble([teacher]).encode(texts, show_progress=False)
    assert reader.dim == teacher.dim and len(reader) == len(texts)
    assert torch.allclose(reader[np.arange(len(texts))], direct, atol=2e-3)
    rows = reader.lookup(text_ids([texts[5], texts[60]]))
    assert rows.tolist() == [5, 60]
    assert torch.equal(reader[5], reader[[5]][0])
    manifest = reference.manifest(teacher)
    assert manifest["rows"] == 70 and [s["rows"] for s in manifest["shards"]] == [16, 16, 16, 16, 6]
    assert manifest["teacher"]["max_length"] == 32 and manifest["teacher"]["dtype"] == "float16"
    assert verify_tree(reference.root) == []


def test_teachers_concatenate_at_read_time_and_a_new_teacher_encodes_only_itself(
    tmp_path, texts, teacher, tiny_qwen2
):
    cache = TeacherCache(tmp_path)
    cache.build(texts, [teacher], batch_size=2, shard_rows=SHARD_ROWS, show_progress=False)
    before = {p: p.stat().st_mtime_ns for p in cache.teacher_dir(teacher).iterdir()}
    second = HuggingFaceTeacher(tiny_qwen2, pooling="last", max_length=32)
    cache.build(texts, [teacher, second], batch_size=2, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in cache.teacher_dir(teacher).iterdir()} == before
    both = cache.reader([teacher, second])[np.arange(len(texts))]
    expected = TeacherEnsemble([teacher, second]).encode(texts, show_progress=False)
    assert both.shape == (70, teacher.dim + second.dim)
    assert torch.allclose(both, expected, atol=2e-3)
    # Teacher weights apply at read time: the same shards give the weighted ensemble's target (float16 shards).
    weighted = cache.reader([teacher, second], weights=[3.0, 1.0])[np.arange(len(texts))]
    expected = TeacherEnsemble([teacher, second], weights=[3.0, 1.0]).encode(texts, show_progress=False)
    assert torch.allclose(weighted, expected, atol=2e-3)
    assert not torch.allclose(weighted, both, atol=2e-3)


# Children forked from this process inherit the loaded teacher (no second import of torch and transformers: ~1 s
# per child instead of ~5 s). Safe here: every test runs torch on one thread (`one_thread`), so no OpenMP pool is
# copied mid-use. A child patches only its own copy of a function to die at a chosen point.
FORK = multiprocessing.get_context("fork")


def die_after(count, function):
    """``function`` that SIGKILLs its process on call ``count + 1``: a kill at a chosen point, in a child only."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > count:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)

    return wrapped


def build_then_die(root, texts, teacher, point, count):
    if point == "encode":  # in the middle of a shard's batches
        teacher.encode = die_after(count, teacher.encode)
    elif point == "rename":  # shard written and fsynced, not yet renamed into place
        os.replace = die_after(count, os.replace)  # the cache's writes rename through os.replace
    elif point == "manifest":  # every shard in place, no manifest yet
        TeacherCache._finish = die_after(count, TeacherCache._finish)
    TeacherCache(root).build(texts, [teacher], batch_size=2, shard_rows=SHARD_ROWS, show_progress=False)


def counting_encode(teacher, calls):
    """Record the number of texts of every ``encode`` call (an instance attribute; ``del teacher.encode`` undoes)."""
    encode = teacher.encode
    teacher.encode = lambda chunk, batch_size: calls.append(len(chunk)) or encode(chunk, batch_size)


# Where each kill leaves the build: the shards finished (renamed into place) and whether a shard's temporary
# file is left. encode-5: 2 encode calls (8 texts each) per shard of 16, killed in the 6th call (shard 2);
# rename-6: os.replace writes ids.npy, corpus.json, fingerprint.json, shards 0-2, then dies before shard 3's;
# manifest-0: every shard written, killed on entering _finish.
@pytest.mark.parametrize(
    "point,count,finished,temporary",
    [("encode", 5, 2, False), ("rename", 6, 3, True), ("manifest", 0, 5, False)],
)
def test_a_build_killed_anywhere_resumes_bitwise_identical(
    tmp_path, texts, teacher, reference, point, count, finished, temporary
):
    root = tmp_path / "cache"
    child = FORK.Process(target=build_then_die, args=(root, texts, teacher, point, count))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    cache = TeacherCache(root)
    assert cache.manifest(teacher) is None
    assert verify_tree(root) != []  # an unfinished build is reported as such
    done = {p.name: p.stat().st_mtime_ns for p in cache.teacher_dir(teacher).glob("shard-*.npy")}
    assert sorted(done) == [f"shard-{i:05d}.npy" for i in range(finished)]
    assert bool(list(cache.teacher_dir(teacher).glob(".*.tmp"))) == temporary
    for name in done:  # what survived the kill is already the uninterrupted build's bytes
        assert (cache.teacher_dir(teacher) / name).read_bytes() == shard_bytes(reference, teacher)[name]
    calls = []
    counting_encode(teacher, calls)
    try:
        cache.build(texts, [teacher], batch_size=2, show_progress=False)
    finally:
        del teacher.encode
    sizes = {f"shard-{i:05d}.npy": min(SHARD_ROWS, len(texts) - SHARD_ROWS * i) for i in range(5)}
    assert sum(calls) == len(texts) - sum(sizes[name] for name in done)
    for name, mtime in done.items():  # finished shards were not recomputed
        assert (cache.teacher_dir(teacher) / name).stat().st_mtime_ns == mtime
    assert not list(cache.teacher_dir(teacher).glob(".*.tmp"))
    assert shard_bytes(cache, teacher) == shard_bytes(reference, teacher)
    assert cache.manifest(teacher)["shards"] == reference.manifest(teacher)["shards"]
    assert verify_tree(root) == []


def build_as_rank(rank, world, store, root, texts, teacher, kill_on_rename, report):
    """One rank of a distributed build (what ``torchrun ... precompute.py`` runs in each process), over gloo.
    ``kill_on_rename``: SIGKILL at that os.replace of this rank (its shards' renames). Writes to ``report`` the
    texts it encoded, or the error it raised."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    calls = []
    counting_encode(teacher, calls)
    if kill_on_rename is not None:
        os.replace = die_after(kill_on_rename - 1, os.replace)
    try:
        TeacherCache(root).build(
            texts, [teacher], batch_size=2, shard_rows=SHARD_ROWS, show_progress=False, distributed=True
        )
    except Exception as error:
        report.write_text(json.dumps({"error": str(error)}))
        os._exit(3)  # the other ranks wait for this one: the parent stops them, as torchrun would
    dist.destroy_process_group()
    report.write_text(json.dumps({"encoded": sum(calls)}))


def start_ranks(tmp_path, run, world, roots, texts, teacher, kill=None):
    """``world`` forked ranks building ``roots[rank]`` from ``texts`` (or ``texts[rank]``, a list per rank);
    ``kill``: {rank: the os.replace call to die on}."""
    ranks = []
    for rank in range(world):
        own = texts[rank] if isinstance(texts[0], list) else texts
        args = (rank, world, tmp_path / f"store-{run}", roots[rank], own, teacher, (kill or {}).get(rank))
        ranks.append(FORK.Process(target=build_as_rank, args=(*args, tmp_path / f"{run}-{rank}.json")))
        ranks[-1].start()
    return ranks


def stop(process):
    if process.is_alive():
        process.kill()
    process.join(timeout=30)


def test_ranks_share_one_build_and_a_killed_job_resumes_with_other_ranks_bitwise_identical(
    tmp_path, texts, teacher, reference
):
    """Two ranks encode disjoint shards of one folder (5 missing: rank 0 takes 0, 2, 4; rank 1 takes 1, 3). Rank 1
    is killed while renaming its first shard into place; rank 0 writes its three, then stops at the meeting
    point without writing a manifest (torchrun too stops the other ranks when one dies). Three ranks then resume it:
    they split the two missing shards (rank 0 takes 1, rank 1 takes 3), keep every finished shard untouched,
    clear the dead rank's temporary file, and end with the single-process build's bytes and manifest."""
    root = tmp_path / "cache"
    folder = TeacherCache(root).teacher_dir(teacher)
    first = start_ranks(tmp_path, "first", 2, [root, root], texts, teacher, kill={1: 1})
    try:
        first[1].join(timeout=120)
        assert first[1].exitcode == -signal.SIGKILL
        # Rank 0 writes its three shards and reaches the meeting point, where gloo finds rank 1 gone and raises
        # (the job is over, as torchrun would end it): no manifest, and not the missing-shards error that a rank 0
        # hashing the shards without waiting for rank 1 would raise.
        first[0].join(timeout=120)
        report = json.loads((tmp_path / "first-0.json").read_text())
        assert first[0].exitcode == 3 and "gloo" in report["error"], report
    finally:
        for process in first:
            stop(process)
    done = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.npy")}
    assert sorted(done) == [f"shard-{i:05d}.npy" for i in (0, 2, 4)]
    assert [p.name.split(".")[1] for p in folder.glob(".*.tmp")] == ["shard-00001"]  # the dead rank's rename
    assert TeacherCache(root).manifest(teacher) is None
    resumed = start_ranks(tmp_path, "resumed", 3, [root] * 3, texts, teacher)
    for process in resumed:
        process.join(timeout=120)
    reports = [json.loads((tmp_path / f"resumed-{rank}.json").read_text()) for rank in range(3)]
    assert [p.exitcode for p in resumed] == [0, 0, 0], reports
    assert [r["encoded"] for r in reports] == [SHARD_ROWS, SHARD_ROWS, 0]  # shards 1 and 3, once each
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.npy") if p.name in done} == done
    assert not list(folder.glob(".*.tmp"))
    assert shard_bytes(TeacherCache(root), teacher) == shard_bytes(reference, teacher)
    assert (folder / "manifest.json").read_bytes() == (
        reference.teacher_dir(teacher) / "manifest.json"
    ).read_bytes()
    assert verify_tree(root) == []


def test_ranks_that_do_not_share_the_cache_folder_or_the_texts_are_refused(tmp_path, texts, teacher):
    """Ranks on nodes whose paths.cache_dir is each node's own disk would each hold part of the shards: rank 1 does
    not find the corpus.json that rank 0 wrote, and says what to change. Ranks whose data differ (a source read in
    another order) would write other texts' vectors into rank 0's rows: refused too."""
    with pytest.raises(RuntimeError, match="start the command with torchrun"):
        Ranks(distributed=True)  # no process group
    apart = start_ranks(tmp_path, "apart", 2, [tmp_path / "node0", tmp_path / "node1"], texts[:20], teacher)
    shuffled = [texts[:20], texts[:20][::-1]]
    other = start_ranks(tmp_path, "other", 2, [tmp_path / "shared"] * 2, shuffled, teacher)
    try:
        apart[1].join(timeout=120)
        other[1].join(timeout=120)
    finally:
        for process in (*apart, *other):
            stop(process)
    assert apart[1].exitcode == 3 and other[1].exitcode == 3
    error = json.loads((tmp_path / "apart-1.json").read_text())["error"]
    assert f"rank 1 of 2 does not see {tmp_path / 'node1'}" in error
    assert "paths.cache_dir must be on a file system that every node mounts" in error
    error = json.loads((tmp_path / "other-1.json").read_text())["error"]
    assert "rank 1 of 2 has other texts" in error and "every rank must read the same texts" in error


def test_a_second_builder_waits_for_the_first_and_leaves_its_files_alone(tmp_path, texts, teacher, reference):
    """Two processes building one cache at once (DDP ranks, parallel sweep jobs): the second waits on the teacher
    folder's lock, never deletes the first one's half-written shard (its cleanup of a killed build's leftovers
    once did, and a rank died on the rename), then finds the shards written and encodes nothing."""
    cache = TeacherCache(tmp_path)
    folder = cache.teacher_dir(teacher)
    folder.mkdir(parents=True)
    calls = []
    encode = teacher.encode
    teacher.encode = lambda chunk, batch_size: calls.append(len(chunk)) or encode(chunk, batch_size)
    errors = []

    def build():
        try:
            cache.build(texts, [teacher], batch_size=2, shard_rows=SHARD_ROWS, show_progress=False)
        except Exception as error:  # a thread's exception would otherwise vanish
            errors.append(error)

    second = threading.Thread(target=build)
    try:
        with exclusive(folder / LOCK, "the first builder's shards"):  # the first builder, mid-shard
            in_flight = folder / ".shard-00000.npy.12345.tmp"
            in_flight.write_bytes(b"half a shard")
            second.start()
            second.join(timeout=2)
            assert second.is_alive()  # waiting for the lock
            assert in_flight.exists() and not list(folder.glob("shard-*.npy"))
            in_flight.unlink()
            for path in reference.teacher_dir(teacher).glob("[!.]*"):  # the first builder finishes
                shutil.copy2(path, folder / path.name)
        second.join(timeout=60)
    finally:
        del teacher.encode
    assert not second.is_alive() and errors == [] and calls == []
    assert shard_bytes(cache, teacher) == shard_bytes(reference, teacher)
    assert verify_tree(tmp_path) == []


class Crash(BaseException):
    pass


@pytest.mark.parametrize("point", ["replace", "_finish"])
def test_a_build_that_crashes_before_a_rename_or_the_manifest_resumes(
    tmp_path, texts, teacher, reference, monkeypatch, point
):
    """The in-process twin of the SIGKILL test above (fast): a crash leaves a temp file or no manifest."""
    calls = {"n": 0}
    target = (os, "replace") if point == "replace" else (TeacherCache, "_finish")
    original = getattr(*target)

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > (5 if point == "replace" else 0):
            raise Crash
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, crash)
    with pytest.raises(Crash):
        TeacherCache(tmp_path).build(
            texts, [teacher], batch_size=2, shard_rows=SHARD_ROWS, show_progress=False
        )
    monkeypatch.undo()
    cache = TeacherCache(tmp_path)
    assert cache.manifest(teacher) is None
    cache.build(texts, [teacher], batch_size=2, show_progress=False)
    assert shard_bytes(cache, teacher) == shard_bytes(reference, teacher)
    assert verify_tree(tmp_path) == []


def test_a_cache_for_another_teacher_configuration_is_refused(tmp_path, texts, teacher, tiny_bert):
    cache = TeacherCache(tmp_path)
    cache.build(texts[:20], [teacher], batch_size=2, show_progress=False)
    other = HuggingFaceTeacher(tiny_bert, max_length=16, prompt="query: ")
    with pytest.raises(CacheMismatch, match="max_length: cache has 32, this run has 16") as error:
        cache.reader([other])
    assert "prompt: cache has '', this run has 'query: '" in str(error.value)
    with pytest.raises(CacheMismatch, match="different texts"):
        cache.build(texts[:21], [teacher], show_progress=False)
    with pytest.raises(CacheMismatch, match="1 of 2 texts of this run are not in the cache"):
        cache.reader([teacher]).lookup(text_ids([texts[0], "a text that was never cached"]))


def test_verify_detects_corruption_and_non_finite_rows(tmp_path, reference, teacher, capsys):
    root = tmp_path / "copy"
    os.system(f"cp -r {reference.root} {root}")  # noqa: S605 (test-local copy)
    assert verify_cache_dir(root) == 0 and "cache OK" in capsys.readouterr().out
    folder = TeacherCache(root).teacher_dir(teacher)
    shard = folder / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in one vector
    shard.write_bytes(bytes(data))
    array = np.load(folder / "shard-00003.npy")
    array[2, 0] = np.nan
    array[4, 1] = np.inf
    np.save(folder / "shard-00003.npy", array)
    (folder / "shard-00004.npy").unlink()
    problems = verify_tree(root)
    assert any("shard-00001.npy: vectors hash differs" in p for p in problems)
    assert any("shard-00003.npy: 2 row(s) with NaN/inf" in p for p in problems)
    assert any("shard-00004.npy: missing" in p for p in problems)
    assert verify_cache_dir(root) == 1
    assert "PROBLEM" in capsys.readouterr().out


def test_verify_names_a_damaged_or_missing_manifest_and_corpus_file(tmp_path, reference, teacher, capsys):
    """The cache directory's form (python precompute.py verify=all): each damaged JSON file and each unfinished
    teacher folder is a problem naming the file, never a bare JSON error."""
    cache_dir = tmp_path / "cache"
    for name in ("corpus-a", "corpus-b", "corpus-c"):
        shutil.copytree(reference.root, cache_dir / name)
    assert verify_tree(cache_dir) == []
    slug = reference.teacher_dir(teacher).name
    (cache_dir / "corpus-a" / slug / "manifest.json").write_text('{"rows": 7')  # a torn write
    (cache_dir / "corpus-b" / slug / "manifest.json").unlink()  # a build killed before its last write
    (cache_dir / "corpus-c" / "corpus.json").unlink()
    problems = verify_tree(cache_dir)
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"corpus-a/{slug}/manifest.json: damaged, not readable JSON")
    assert problems[1].startswith(f"corpus-b/{slug}/manifest.json: missing, unfinished build (5 shard(s))")
    assert problems[2].startswith("corpus-c/") and "no corpus.json" in problems[2]
    assert verify_cache_dir(cache_dir) == 1
    out = capsys.readouterr().out
    assert out.count("PROBLEM ") == 3 and "cache OK" not in out


def test_a_damaged_cache_is_refused_on_load_naming_the_file(tmp_path, reference, teacher, texts):
    from jasper.storage.cache import CacheDamaged

    root = tmp_path / "copy"
    shutil.copytree(reference.root, root)
    folder = TeacherCache(root).teacher_dir(teacher)
    TeacherCache(root).reader([teacher])  # sound: opens
    shard = folder / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # one flipped bit: training would read it silently without the check
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheDamaged, match="shard-00001.npy differs from the manifest's digest") as error:
        TeacherCache(root).reader([teacher])
    assert "python precompute.py" in str(error.value) and "manifest.json" in str(error.value)
    shard.write_bytes(bytes(data[: len(data) // 2]))  # truncated: not numpy's bare mmap error
    with pytest.raises(CacheDamaged, match="shard-00001.npy is truncated or unreadable"):
        TeacherCache(root).reader([teacher])
    shard.unlink()
    (folder / "manifest.json").unlink()  # the rebuild the message names: only that shard is encoded again
    cache = TeacherCache(root)
    cache.build(texts, [teacher], batch_size=2, show_progress=False)
    assert shard_bytes(cache, teacher) == shard_bytes(reference, teacher)
    cache.reader([teacher])


def test_nan_vectors_are_never_written(tmp_path, texts, teacher):
    class Broken:
        name, dim = "broken", 4

        def encode(self, chunk, batch_size):
            out = torch.ones(len(chunk), 4)
            out[0, 0] = float("nan")
            return out

    with pytest.raises(ValueError, match="NaN/inf"):
        TeacherCache(tmp_path).build(texts[:10], [Broken()], show_progress=False)
    assert not list((tmp_path / "broken").glob("shard-*"))


def fit_eight_steps(tiny_bert, docstrings, cache_dir, feature_cache: bool, stage: int):
    """Eight steps of stage 1, or of stage 3 on the frozen encoder (``train_encoder=False``), on the tiny student;
    returns the student's weights before and after, and the DataModule."""
    import functools

    import lightning as L

    from jasper.core.losses import DistillLoss
    from jasper.data.datamodule import TextDistillDataModule
    from jasper.models.student import Student
    from jasper.training.stages.stage1 import Stage1
    from jasper.training.stages.stage3 import Stage3

    teacher = HuggingFaceTeacher(tiny_bert, max_length=32, pooling="cls")
    L.seed_everything(3)
    student = Student(
        tiny_bert, fc1_dim=teacher.dim, num_layers=4, max_length=32, mrl_dims=[16, 8] if stage == 3 else []
    )
    data = TextDistillDataModule(
        docstrings[:80],
        TeacherEnsemble([teacher], batch_size=8),
        tokenize=student.tokenize,
        batch_size=8,
        val_texts=8,
        augment={"chunk_share": 0.3, "shuffle_share": 0.05},
        seed=3,
        cache_dir=str(cache_dir),
        features=student if feature_cache else None,
    )
    before = {k: v.detach().clone() for k, v in student.state_dict().items()}
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-2)
    if stage == 1:
        module = Stage1(student, DistillLoss(), optimizer=optimizer)
    else:
        module = Stage3(student, DistillLoss(), train_encoder=False, optimizer=optimizer)
    trainer = L.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    L.seed_everything(3)
    trainer.fit(module, datamodule=data)
    return before, {k: v.detach().clone() for k, v in student.state_dict().items()}, data


def test_stage1_on_cached_features_matches_stage1_on_the_encoder(tiny_bert, docstrings, tmp_path):
    before, plain, _ = fit_eight_steps(tiny_bert, docstrings, tmp_path, feature_cache=False, stage=1)
    _, cached, data = fit_eight_steps(tiny_bert, docstrings, tmp_path, feature_cache=True, stage=1)
    assert not torch.allclose(plain["fc1.weight"], before["fc1.weight"])  # FC1 did train
    batch = next(iter(data.train_dataloader()))
    assert "features" in batch and "input_ids" not in batch  # the encoder never ran during training
    difference = (cached["fc1.weight"] - plain["fc1.weight"]).abs().max()
    assert torch.allclose(cached["fc1.weight"], plain["fc1.weight"], atol=1e-5), difference
    assert any(p.name.startswith("student-features-") for p in tmp_path.glob("corpus-*/*"))


def test_frozen_stage3_on_cached_features_matches_frozen_stage3_on_the_encoder(
    tiny_bert, docstrings, tmp_path
):
    before, plain, _ = fit_eight_steps(tiny_bert, docstrings, tmp_path, feature_cache=False, stage=3)
    _, cached, data = fit_eight_steps(tiny_bert, docstrings, tmp_path, feature_cache=True, stage=3)
    assert "features" in next(iter(data.train_dataloader()))
    changed = {k for k in plain if not torch.equal(plain[k], before[k])}
    assert changed == {
        f"{m}.{p}" for m in ("fc1", "heads.16", "heads.8") for p in ("weight", "bias")
    }  # encoder frozen
    for key in plain:  # tolerance: float32 sums over the same features in another order
        assert torch.allclose(cached[key], plain[key], atol=1e-5), (
            key,
            (cached[key] - plain[key]).abs().max(),
        )


def test_stage3_feature_cache_needs_the_frozen_encoder():
    from omegaconf import OmegaConf

    from jasper.training.assembly import check_feature_cache

    settings = OmegaConf.create({"feature_cache": True, "module": {"train_encoder": True}})
    with pytest.raises(ValueError, match="add stages.stage3.module.train_encoder=false"):
        check_feature_cache(settings, 3)
    settings.module.train_encoder = False
    check_feature_cache(settings, 3)
    with pytest.raises(ValueError, match="set stages.stage2.feature_cache=false"):
        check_feature_cache(OmegaConf.create({"feature_cache": True, "module": {}}), 2)


def edited_copy(folder, destination):
    """A copy of a model folder with one weight changed (by 1e-3)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, destination)
    weights = load_file(destination / "model.safetensors")
    key = sorted(weights)[0]
    weights[key].view(-1)[0] += 1e-3
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return str(destination)


def test_a_teacher_whose_weights_changed_is_refused_by_name(tmp_path, texts, tiny_bert):
    cache = TeacherCache(tmp_path / "cache")
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    teacher = HuggingFaceTeacher(str(model), name="tiny", max_length=32)
    cache.build(texts[:20], [teacher], batch_size=4, show_progress=False)
    assert cache.manifest(teacher)["teacher"]["weights"] == teacher.weights is not None
    shutil.rmtree(model)
    edited_copy(tiny_bert, model)  # same path, same name: one weight differs
    changed = HuggingFaceTeacher(str(model), name="tiny", max_length=32)
    assert changed.weights != teacher.weights
    with pytest.raises(CacheMismatch, match=r"teacher 'tiny' changed .*weights: cache has '") as error:
        cache.reader([changed])
    assert "the model's files changed" in str(error.value) and not changed.loaded
    with pytest.raises(CacheMismatch, match="teacher 'tiny' changed"):
        cache.build(texts[:20], [changed], show_progress=False)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"num_layers": 3}, "num_layers: cache has 4, this run has 3"),
        ({"dtype": "bfloat16"}, "compute_dtype: cache has None, this run has 'bfloat16'"),
    ],
)
def test_a_teacher_with_other_layers_or_dtype_is_refused(
    tmp_path, texts, teacher, tiny_bert, change, message
):
    cache = TeacherCache(tmp_path)
    cache.build(texts[:20], [teacher], batch_size=4, show_progress=False)
    other = HuggingFaceTeacher(tiny_bert, max_length=32, **change)
    with pytest.raises(CacheMismatch, match=message):
        cache.reader([other])


def test_a_cache_from_before_weights_were_recorded_is_refused_with_a_reason(tmp_path, texts, teacher):
    cache = TeacherCache(tmp_path)
    cache.build(texts[:20], [teacher], batch_size=4, show_progress=False)
    path = cache.teacher_dir(teacher) / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("weights", "num_layers", "compute_dtype"):
        del manifest["teacher"][key]
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        CacheMismatch, match="written before jasper recorded weights, num_layers, compute_dtype"
    ):
        cache.reader([teacher])


def test_the_role_is_part_of_the_cache_key(reference, texts, tiny_bert):
    """Vectors cached for documents are refused to the same teacher as queries (and its query prompt); a manifest
    written before roles existed is a document's, as every text then was."""
    query = HuggingFaceTeacher(tiny_bert, max_length=32, prompts={"query": "query: "}, role="query")
    with pytest.raises(CacheMismatch, match=r"role: cache has 'document', this run has 'query'.*prompt"):
        reference.reader([query])
    from jasper.storage.cache.format import differences, fingerprint

    old = {k: v for k, v in fingerprint(HuggingFaceTeacher(tiny_bert, max_length=32)).items() if k != "role"}
    assert differences(old, fingerprint(HuggingFaceTeacher(tiny_bert, max_length=32))) == []
    assert differences(old, fingerprint(query))[0] == "role: cache has 'document', this run has 'query'"


def test_a_cache_of_another_target_size_is_refused_naming_each_teachers(reference, teacher):
    assert reference.reader([teacher], target_dim=teacher.dim).dim == 32
    with pytest.raises(
        ValueError, match=r"cached in .* give a 32-d target \(.*: 32\) but teachers.target_dim is 64"
    ):
        reference.reader([teacher], target_dim=64)


def test_a_damaged_json_or_ids_file_is_named_with_its_fix_on_load_and_by_verify(
    tmp_path, reference, teacher, texts
):
    """Training and precompute read manifest.json, corpus.json and ids.npy too: a damaged one is an error naming
    the file and the command that rebuilds it (not a bare JSONDecodeError), and verify lists it, never crashes."""
    from jasper.storage.cache import CacheDamaged

    root = tmp_path / "corpus-a"
    shutil.copytree(reference.root, root)
    manifest = TeacherCache(root).teacher_dir(teacher) / "manifest.json"
    manifest.write_text('{"format": 1, "tea')  # a torn write
    for read in (
        lambda: TeacherCache(root).reader([teacher]),
        lambda: TeacherCache(root).build(texts, [teacher]),
    ):
        with pytest.raises(
            CacheDamaged, match=rf"{manifest} is damaged, not readable JSON .*python precompute.py"
        ):
            read()
    shutil.copy(reference.teacher_dir(teacher) / "manifest.json", manifest)
    ids = root / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:100])
    with pytest.raises(CacheDamaged, match=rf"{ids} is truncated or unreadable .*delete {root}"):
        TeacherCache(root).verify()
    problems = verify_tree(tmp_path)
    assert len(problems) == 1 and f"{ids} is truncated or unreadable" in problems[0]


def test_a_teacher_name_never_becomes_a_folder_outside_the_cache():
    from jasper.storage.cache.format import slug

    assert slug("org/model name") == "org-model-name"  # no separator survives
    assert slug("../../etc") == "..-..-etc"  # one folder name, inside the cache
    for name in ("..", ".", "/..", "../"):
        with pytest.raises(ValueError, match=r"teachers.teachers\[\].name='\.+' cannot name a folder"):
            slug(name)


def test_the_feature_cache_of_another_max_length_is_another_folder(tiny_bert):
    """Stage 1 at max_length 256 must not meet (and be refused by) the features cached at 128."""
    from jasper.models.student import Student
    from jasper.storage.cache.features import PooledFeatures

    short, long = (PooledFeatures(Student(tiny_bert, fc1_dim=8, max_length=n)) for n in (128, 256))
    assert short.weights == long.weights and short.name != long.name
