from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import jasper.training.resolvers  # noqa: F401  (resolvers)
from jasper.models.encoders import check_finite
from jasper.models.ensemble import TeacherEnsemble
from jasper.models.student import Student
from jasper.models.teachers import HuggingFaceTeacher, SentenceTransformerTeacher
from jasper.storage.cache import fingerprint
from jasper.training.precompute import precompute
from jasper.training.run import build

CONF = Path(__file__).resolve().parents[1] / "conf"

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A recipe for lemon cake", "x"]


def test_ensemble_normalises_each_teacher_then_the_concatenation(tiny_bert, tiny_qwen2):
    a, b = HuggingFaceTeacher(tiny_bert, pooling="cls"), HuggingFaceTeacher(tiny_qwen2, pooling="last")
    ensemble = TeacherEnsemble([a, b])
    assert ensemble.dim == a.dim + b.dim  # computed from the teachers, never typed
    vectors = ensemble.encode(TEXTS, show_progress=False)
    expected = F.normalize(torch.cat([a.encode(TEXTS), b.encode(TEXTS)], dim=-1), dim=-1)
    assert torch.allclose(vectors, expected, atol=1e-5)
    # Two unit vectors concatenated and normalised: each half has norm 1/sqrt(2).
    assert torch.allclose(vectors[:, : a.dim].norm(dim=-1), torch.full((4,), 2**-0.5), atol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (2.0, 1.0), (0.3, 5.0)])
def test_weighted_ensemble_is_the_reference_formula(tiny_bert, tiny_qwen2, weights):
    """Reference: unit vector per teacher, times its weight, concatenated, unit again (atol 1e-5, float32); the
    per-teacher slice norms are w_k / sqrt(sum w^2), the target's share each teacher holds."""
    a, b = HuggingFaceTeacher(tiny_bert, pooling="cls"), HuggingFaceTeacher(tiny_qwen2, pooling="last")
    vectors = TeacherEnsemble([a, b], weights=weights).encode(TEXTS, show_progress=False)
    parts = [w * F.normalize(t.encode(TEXTS), dim=-1) for t, w in zip((a, b), weights, strict=True)]
    torch.testing.assert_close(vectors, F.normalize(torch.cat(parts, dim=-1), dim=-1), atol=1e-5, rtol=0)
    norm = (weights[0] ** 2 + weights[1] ** 2) ** 0.5
    torch.testing.assert_close(
        vectors[:, : a.dim].norm(dim=-1), torch.full((4,), weights[0] / norm), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "weights,message",
    [([1.0], r"1 value\(s\) for 2 teacher\(s\)"), ([1.0, 0.0], "b=0.0"), ([float("nan"), 1.0], "a=nan")],
)
def test_bad_teacher_weights_are_refused_naming_the_teacher(tiny_bert, weights, message):
    a = HuggingFaceTeacher(tiny_bert, name="a")
    b = HuggingFaceTeacher(tiny_bert, name="b")
    with pytest.raises(ValueError, match=message):
        TeacherEnsemble([a, b], weights=weights)


@pytest.mark.parametrize("layers", [{"num_layers": 3}, {"layers": [0, 2, 5]}])
def test_student_init_as_teacher_equals_the_students_pooled_state(minilm_path, layers):
    teacher = HuggingFaceTeacher(minilm_path, pooling="mean", max_length=128, **layers)
    student = Student(minilm_path, fc1_dim=8, max_length=128, **layers).eval()
    batch = student.tokenize(TEXTS)
    with torch.no_grad():
        pooled = F.normalize(student.pooled(batch["input_ids"], batch["attention_mask"]), dim=-1)
    assert torch.allclose(teacher.encode(TEXTS), pooled, atol=1e-5)


def test_sentence_transformer_teacher_with_prompt(minilm_path):
    plain = SentenceTransformerTeacher(minilm_path)
    prompted = SentenceTransformerTeacher(minilm_path, prompt="query: ")
    assert (plain.dim, plain.max_length, plain.num_layers) == (384, 256, 6)  # from its files: nothing loaded
    assert not plain.loaded
    assert torch.allclose(prompted.encode(["a cat"]), plain.encode(["query: a cat"]), atol=1e-5)


def test_non_finite_vectors_are_refused():
    with pytest.raises(ValueError, match="NaN/inf"):
        check_finite(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), "teacher X")


def test_missing_teacher_and_empty_ensemble(tmp_path):
    with pytest.raises(ValueError, match="no teachers"):
        TeacherEnsemble([])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HuggingFaceTeacher(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceTransformerTeacher(str(tmp_path / "nowhere"))


def test_a_teacher_is_a_description_until_it_encodes(minilm_path):
    st = SentenceTransformerTeacher(minilm_path, name="st")
    hf = HuggingFaceTeacher(minilm_path, name="hf", num_layers=3, max_length=64)
    described = [fingerprint(st), fingerprint(hf)]
    assert not st.loaded and not hf.loaded
    assert (described[1]["dim"], described[1]["num_layers"], described[1]["max_length"]) == (384, 3, 64)
    st.encode(["a cat"]), hf.encode(["a cat"])
    assert st.loaded and hf.loaded
    assert st.model.max_seq_length == st.max_length and hf.model.config.num_hidden_layers == 3
    assert [fingerprint(st), fingerprint(hf)] == described  # loading changes nothing in the cache key


def test_a_configured_dim_its_files_contradict_stops_before_the_model_loads(tiny_bert):
    """(A loaded model of another size than the config says: tests/test_replicas.py, whose custom-code teacher's
    files do not tell its size.)"""
    teacher = HuggingFaceTeacher(tiny_bert, dim=48)
    with pytest.raises(
        ValueError, match="config gives dim: 48 but its files give a 32-d output; set dim: 32"
    ):
        _ = teacher.dim
    assert not teacher.loaded and HuggingFaceTeacher(tiny_bert, dim=32).dim == 32


def test_the_ensemble_gives_every_teacher_the_role_and_checks_the_target_size(tiny_bert, tiny_qwen2):
    a = HuggingFaceTeacher(tiny_bert, name="a", prompts={"query": "query: ", "document": "passage: "})
    b = HuggingFaceTeacher(tiny_qwen2, name="b", prompt="same: ")
    assert (a.role, a.prompt, b.prompt) == ("document", "passage: ", "same: ")
    TeacherEnsemble([a, b], role="query", target_dim=64)
    assert (a.role, a.prompt, b.role, b.prompt) == ("query", "query: ", "query", "same: ")
    assert torch.allclose(
        a.encode(["a cat"]), HuggingFaceTeacher(tiny_bert).encode(["query: a cat"]), atol=1e-5
    )
    with pytest.raises(
        ValueError, match=r"give a 64-d target \(a: 32, b: 32\) but teachers.target_dim is 48"
    ):
        TeacherEnsemble([a, b], target_dim=48)
    with pytest.raises(ValueError, match="role 'passage' is not one of"):
        TeacherEnsemble([a], role="passage")
    with pytest.raises(ValueError, match=r"prompts name \['passage'\]"):
        HuggingFaceTeacher(tiny_bert, prompts={"passage": "p: "})


def test_a_complete_cache_trains_without_loading_any_teacher(tiny_bert, corpus_file, tmp_path, monkeypatch):
    teachers = [
        f"{{_target_:jasper.models.teachers.HuggingFaceTeacher,model_name_or_path:'{tiny_bert}',name:hf,max_length:32}}",
        f"{{_target_:jasper.models.teachers.SentenceTransformerTeacher,model_name_or_path:'{tiny_bert}',name:st}}",
    ]
    args = [
        "data=local_files",
        f"data.source.paths=[{corpus_file}]",
        "data.val_texts=8",
        "data.max_texts=24",
        f"teachers.teachers=[{','.join(teachers)}]",
        "teachers.batch_size=8",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'stage1'}",
        f"model.model_name_or_path={tiny_bert}",
        "model.num_layers=2",
        "model.layers=null",
        "model.mrl_dims=[16]",
        "model.max_length=32",
        "debug=fast",
        "stage=1",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        precompute(compose("precompute", overrides=args))
        cfg = compose("train", overrides=args)

    def unloadable(self):
        raise RuntimeError(f"teacher {self.name} was loaded")

    for kind in (HuggingFaceTeacher, SentenceTransformerTeacher):
        monkeypatch.setattr(kind, "load", unloadable)
    monkeypatch.setattr(HuggingFaceTeacher, "tokenizer", property(unloadable))
    module, datamodule, trainer = build(cfg)
    assert module.student.fc1_dim == 64  # 32 + 32, read from the teachers' config files
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    assert not any(t.loaded for t in datamodule.teachers.teachers)
    # teachers.weights re-weights the same cache at read time: nothing encoded, no teacher loaded.
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        weighted_cfg = compose("train", overrides=[*args, "teachers.weights=[3.0,1.0]"])
    _, weighted, _ = build(weighted_cfg)
    weighted.setup("fit")
    plain = datamodule.val_set.teacher_vectors
    halves = [F.normalize(plain[:, :32], dim=-1), F.normalize(plain[:, 32:], dim=-1)]
    expected = F.normalize(torch.cat([3.0 * halves[0], halves[1]], dim=-1), dim=-1)
    torch.testing.assert_close(weighted.val_set.teacher_vectors, expected, atol=1e-5, rtol=0)
    assert not any(t.loaded for t in weighted.teachers.teachers)
