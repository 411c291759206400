"""evaluate.py: every model kind and head in one table, each text encoded once, subsets, reports, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jasper.evaluation.loaders import BeirData, EvaluationDataError, StsPair
from jasper.evaluation.models import StudentHeads, VectorCache, load_model
from jasper.evaluation.runner import evaluate, missing_data_note
from jasper.evaluation.sets import subset_beir, subset_pairs
from jasper.exporting import export_student
from jasper.models.student import Student
from jasper.storage.checkpoints import save_student

REPO = Path(__file__).resolve().parents[1]

STS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman cuts an onion.", 4.5),
    ("A dog runs in the park.", "A cat sleeps on the sofa.", 0.6),
    ("Two kids are playing football.", "Children play soccer outside.", 3.9),
    ("The stock market fell today.", "A chef is cooking pasta.", 0.1),
    ("A plane is taking off.", "An airplane departs from the runway.", 4.6),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny dev folder: one STS TSV and one BEIR folder (3 queries, 8 docs)."""
    root = tmp_path_factory.mktemp("dev")
    (root / "sts.tsv").write_text(
        "score\tsentence1\tsentence2\n" + "".join(f"{c}\t{a}\t{b}\n" for a, b, c in STS)
    )
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [
        "Paris is the capital of France.",
        "Berlin is the capital of Germany.",
        "The guitar has six strings.",
        "Pasta is boiled in salted water.",
        "Football is played with a round ball.",
        "The Eiffel Tower stands in Paris.",
        "Violins have four strings.",
        "Rome is the capital of Italy.",
    ]
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    queries = {"q0": "capital of France", "q1": "how many strings does a guitar have", "q2": "cooking pasta"}
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    qrels = [("q0", "d0", 2), ("q0", "d5", 1), ("q1", "d2", 2), ("q1", "d6", 0), ("q2", "d3", 2)]
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels)
    )
    return root


def _eval_cfg(data_dir: Path, **extra) -> dict:
    return {
        "name": "t",
        "data_dir": str(data_dir),
        "seed": 0,
        "max_length": 32,
        "sts": {"sts": {"path": "sts.tsv"}},
        "retrieval": {"beir": {"path": "beir", "metrics": ["ndcg@10"]}},
        **extra,
    }


@pytest.fixture(scope="module")
def student(tiny_bert) -> Student:
    torch.manual_seed(0)
    return Student(tiny_bert, fc1_dim=24, mrl_dims=[16, 8], num_layers=2, max_length=32).eval()


class CountingStudent(StudentHeads):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []

    def encode_batch(self, texts):
        self.seen.extend(texts)
        return super().encode_batch(texts)


def test_each_text_encoded_once_for_all_heads(student, data_dir):
    from jasper.evaluation.runner import evaluate_head
    from jasper.evaluation.sets import load_sets

    model = CountingStudent(student, "s")
    cache = VectorCache(model, batch_size=4)
    sets = load_sets(_eval_cfg(data_dir), REPO)
    for head in model.heads:
        evaluate_head(cache.encoder(head), sets, _eval_cfg(data_dir), 4, "s")
    assert len(model.seen) == len(set(model.seen)) == 12 + 8 + 3  # STS sentences + docs + queries
    # The cache serves exactly what the student's own encode gives, per head.
    texts = [s for a, b, _ in STS for s in (a, b)]
    for head in model.heads:
        torch.testing.assert_close(
            cache.encoder(head)(texts), student.encode(texts, head=head), atol=1e-5, rtol=1e-5
        )


def test_students_with_one_encoder_share_pooled_states(student, tiny_bert):
    shared: dict = {}
    first = CountingStudent(student, "a", shared)
    torch.manual_seed(1)
    other_heads = Student(tiny_bert, fc1_dim=24, mrl_dims=[16, 8], num_layers=2, max_length=32).eval()
    second = StudentHeads(other_heads, "b", shared)
    assert first.key == second.key
    first.encode_batch(["one text"])
    before = len(shared)
    out = second.encode_batch(["one text"])
    assert len(shared) == before
    torch.testing.assert_close(out["16"], other_heads.encode(["one text"], head="16"), atol=1e-5, rtol=1e-5)


def test_subsets_are_fixed_and_keep_judged_docs():
    pairs = [StsPair(f"a{i}", f"b{i}", float(i)) for i in range(50)]
    assert subset_pairs(pairs, 10, 0) == subset_pairs(pairs, 10, 0) != subset_pairs(pairs, 10, 1)
    assert subset_pairs(pairs, None, 0) == pairs
    corpus = {f"d{i}": f"doc {i}" for i in range(100)}
    qrels = {f"q{j}": {f"d{10 * j + k}": 1 for k in range(5)} for j in range(10)}
    data = BeirData(corpus, {q: q for q in qrels}, qrels)
    small = subset_beir(data, max_docs=22, seed=0)
    assert len(small.corpus) == 22 and len(small.qrels) == 4
    assert all(d in small.corpus for judged in small.qrels.values() for d in judged)
    assert small == subset_beir(data, max_docs=22, seed=0)
    with pytest.raises(EvaluationDataError, match="max_docs"):
        subset_beir(data, max_docs=3, seed=0)


def test_table_mixes_student_checkpoint_init_export_and_sentence_transformer(
    student, tiny_bert, data_dir, tmp_path
):
    save_student(student, tmp_path / "run" / "stage1" / "student.pt")
    export_student(student, tmp_path / "exported")
    cfg = {
        "eval": _eval_cfg(data_dir, stem="results", title="test"),
        "models": {
            "student": str(tmp_path / "run" / "stage1" / "student.pt"),
            "init": {"path": str(tmp_path / "run" / "stage1" / "student.pt"), "init": True},
            "exported": str(tmp_path / "exported"),
            "plain": tiny_bert,  # a bare HF folder: sentence-transformers adds mean pooling
        },
        "batch_size": 8,
        "seed": 1,  # the student above was drawn with seed 0: init must differ from it
        "out_dir": str(tmp_path / "out"),
    }
    rows, markdown = evaluate(cfg, REPO)
    names = [r.name for r in rows]
    assert names == [f"{m}/{h}" for m in ("student", "init", "exported") for h in ("fc1", "16", "8")] + [
        "plain"
    ]
    by_name = {r.name: r.metrics for r in rows}
    for head in ("fc1", "16", "8"):  # the exported folder scores exactly as the student it came from
        for metric, value in by_name[f"student/{head}"].items():
            assert by_name[f"exported/{head}"][metric] == pytest.approx(value, abs=1e-6)
    assert by_name["init/16"] != by_name["student/16"]  # init has fresh random heads
    assert set(by_name["student/fc1"]) == {"sts", "beir ndcg@10"}
    for suffix in ("json", "md", "png"):
        assert (tmp_path / "out" / f"results.{suffix}").is_file()
    assert "all 6 of 6 pairs" in markdown and "| student/fc1 | 24 |" in markdown


def test_prefix_export_serves_truncated_heads(tiny_bert, data_dir, tmp_path):
    torch.manual_seed(0)
    student = Student(tiny_bert, fc1_dim=24, mrl_dims=[16, 8], mrl_mode="prefix", num_layers=2, max_length=32)
    export_student(student, tmp_path / "exported")
    model = load_model(str(tmp_path / "exported"), "exported", REPO)
    assert model.heads == {"fc1": 24, "16": 16, "8": 8}
    out = model.encode_batch(["a short text", "another one"])
    torch.testing.assert_close(
        out["8"], student.encode(["a short text", "another one"], head="8"), atol=1e-5, rtol=1e-5
    )


def test_fidelity_and_local_mteb_task(student, tiny_bert, data_dir, tmp_path):
    """Fidelity of every row is measured against the teacher's FC1 on the held-out texts: 1 for the teacher itself,
    and for another student exactly what `teacher_fidelity` gives on the two models' own vectors."""
    from jasper.core.metrics import teacher_fidelity

    held_out = [s for a, b, _ in STS for s in (a, b)]
    texts = tmp_path / "held_out.txt"
    texts.write_text("\n".join(held_out) + "\n")
    ecfg = _eval_cfg(
        data_dir,
        retrieval={},
        fidelity={"texts": str(texts), "teacher": "teacher", "batch_size": 4},
        mteb={"local": {"TinySts": {"type": "sts", "path": "sts.tsv"}}},
    )
    torch.manual_seed(5)
    other = Student(tiny_bert, fc1_dim=24, mrl_dims=[16], num_layers=3, max_length=32).eval()
    save_student(other, tmp_path / "other" / "student.pt")
    cfg = {
        "eval": ecfg,
        "models": {"teacher": _save(student, tmp_path), "other": str(tmp_path / "other" / "student.pt")},
        "batch_size": 8,
        "out_dir": str(tmp_path / "o"),
    }
    rows, _ = evaluate(cfg, REPO)
    by_name = {f"{r.model}/{r.head}": r.metrics for r in rows}
    fc1 = by_name["teacher/fc1"]
    assert fc1["fidelity spearman"] == pytest.approx(1.0) and fc1["fidelity cos"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert fc1["mteb TinySts"] == pytest.approx(fc1["sts"], abs=1e-6)  # MTEB agrees with our own Spearman
    target = student.encode(held_out)  # the teacher's first head, FC1
    for head in ("fc1", "16"):
        known = teacher_fidelity(other.encode(held_out, head=head), target, batch_size=4)
        assert by_name[f"other/{head}"]["fidelity spearman"] == pytest.approx(known["spearman"], abs=1e-5)
        assert known["spearman"] < 0.9  # a different model: far from the teacher's 1
    cosine = teacher_fidelity(other.encode(held_out), target, batch_size=4)["cosine"]
    assert by_name["other/fc1"]["fidelity cos"] == pytest.approx(cosine, abs=1e-5) and cosine < 0.9
    assert by_name["other/16"].get("fidelity cos") is None  # 16 vs 24 dimensions: no cosine


def _save(student: Student, tmp_path: Path) -> str:
    save_student(student, tmp_path / "s" / "student.pt")
    return str(tmp_path / "s" / "student.pt")


def test_missing_data_is_named_or_skipped(tmp_path):
    from jasper.evaluation.sets import load_sets

    missing = tmp_path / "nowhere"
    with pytest.raises(EvaluationDataError, match="nowhere"):
        load_sets({"data_dir": str(missing), "sts": ["stsb-dev.tsv"]}, REPO)
    assert "nowhere" in missing_data_note(
        {"eval": {"data_dir": str(missing), "skip_if_missing": True, "sts": ["stsb-dev.tsv"]}}, REPO
    )
    assert missing_data_note({"eval": {"data_dir": str(missing)}}, REPO) is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("./no/such/student.pt", "x", REPO)


def test_sets_as_lists_of_paths_or_mappings(data_dir, tmp_path):
    from jasper.evaluation.sets import load_sets, set_specs

    assert set_specs(["a/my_pairs.tsv", {"path": "b.tsv", "name": "bee", "max_pairs": 3}], "sts") == {
        "my_pairs": {"path": "a/my_pairs.tsv", "name": "my_pairs"},
        "bee": {"path": "b.tsv", "name": "bee", "max_pairs": 3},
    }
    assert set_specs({"x": "x.tsv"}, "sts") == {"x": {"path": "x.tsv", "name": "x"}}
    assert list(set_specs(["data/beir-folder/"], "retrieval")) == ["beir-folder"]
    with pytest.raises(ValueError, match="two sets named"):
        set_specs(["a/s.tsv", "b/s.tsv"], "sts")
    # Relative paths: under data_dir, else under the repository root (here: tmp_path), even with no data_dir.
    (tmp_path / "mine.tsv").write_text((data_dir / "sts.tsv").read_text())
    sets = load_sets({"data_dir": str(tmp_path / "absent"), "sts": ["mine.tsv"], "retrieval": []}, tmp_path)
    assert list(sets.sts) == ["mine"] and len(sets.sts["mine"]) == len(STS)
    sets = load_sets({"data_dir": str(data_dir), "sts": ["sts.tsv"], "retrieval": ["beir"]}, tmp_path)
    assert list(sets.sts) == ["sts"] and list(sets.retrieval) == ["beir"]


def test_evaluate_py_as_documented(student, data_dir, tmp_path):
    """Through the real entry point: model=PATH and models={name: PATH} as written, sets as lists of paths,
    results under <runs_dir>/eval/ without run_name, a progress bar while encoding."""
    path = _save(student, tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"model={path}",
            f"models={{again: {path}}}",
            f"eval.sts=[{data_dir / 'sts.tsv'}]",
            f"eval.retrieval=[{data_dir / 'beir'}]",
            f"runs_dir={tmp_path / 'runs'}",
            "batch_size=4",
            "teacher=null",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "runs" / "eval" / "dev" / "results.json").read_text())
    assert [(r["model"], r["head"]) for r in rows] == [
        (m, h) for m in ("s/student.pt", "again") for h in ("fc1", "16", "8")
    ]
    assert set(rows[0]["metrics"]) == {"sts", "beir ndcg@10"}
    assert "encoding s/student.pt" in result.stderr  # tqdm


def test_eval_configs_compose():
    from hydra import compose, initialize_config_dir

    import jasper.training.resolvers  # noqa: F401
    from jasper.evaluation.runner import default_out_dir
    from jasper.evaluation.sets import set_specs

    with initialize_config_dir(str(REPO / "conf" / "evaluate"), version_base="1.3"):
        for name in ("dev", "quick", "demo"):
            cfg = compose("evaluate", overrides=[f"eval={name}", "run_name=demo"])
            assert cfg.eval.name == name and default_out_dir(cfg) == f"outputs/demo/eval/{name}"
            assert (REPO / cfg.eval.data_dir).resolve() == (REPO.parent / "shared" / "data" / "dev").resolve()
            assert list(set_specs(cfg.eval.sts, "sts")) == ["stsb-dev", "sickr"]
            assert list(set_specs(cfg.eval.retrieval, "retrieval")) == ["dbpedia"]
        demo = compose("evaluate", overrides=["eval=demo"])
        assert default_out_dir(demo) == "outputs/eval/demo"  # no run_name: not outputs/None/...
        assert (
            demo.eval.skip_if_missing
            and set_specs(demo.eval.sts, "sts")["sickr"]["max_pairs"] == 1000
            and set_specs(demo.eval.retrieval, "retrieval")["dbpedia"]["max_docs"] == 1000
        )
        mine = compose("evaluate", overrides=["model=a/b.pt", "models={x: c.pt}", "eval.sts=[m.tsv]"])
        assert mine.model == "a/b.pt" and mine.models == {"x": "c.pt"} and list(mine.eval.sts) == ["m.tsv"]


def test_run_models_lists_teacher_init_and_stages(tmp_path):
    from jasper.evaluation.runner import run_models

    for k in (1, 2, 3):
        (tmp_path / "runs" / "r" / f"stage{k}").mkdir(parents=True)
        (tmp_path / "runs" / "r" / f"stage{k}" / "student.pt").touch()
    cfg = {
        "run_name": "r",
        "runs_dir": str(tmp_path / "runs"),
        "teacher": "T",
        "model": "a/stage9/student.pt",
    }
    models = run_models(cfg, REPO)
    assert list(models) == ["teacher", "init", "stage1", "stage2", "stage3", "stage9/student.pt"]
    assert models["init"] == {"path": str(tmp_path / "runs" / "r" / "stage1" / "student.pt"), "init": True}
    with pytest.raises(FileNotFoundError, match="train first"):
        run_models({"run_name": "none", "runs_dir": str(tmp_path)}, REPO)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_models({}, REPO)


def test_names_that_would_write_outside_the_runs_folder_are_refused():
    from jasper.evaluation.runner import default_out_dir

    assert (
        default_out_dir({"run_name": "ablations/s1", "eval": {"name": "dev"}})
        == "outputs/ablations/s1/eval/dev"
    )
    for cfg in ({"run_name": "..", "eval": {"name": "dev"}}, {"run_name": "r", "eval": {"name": "../../x"}}):
        with pytest.raises(ValueError, match="cannot name a folder"):
            default_out_dir(cfg)
