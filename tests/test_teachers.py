import pytest
import torch
import torch.nn.functional as F

from jasper.student import Student
from jasper.teachers import HuggingFaceTeacher, SentenceTransformerTeacher, TeacherEnsemble, check_finite

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


def test_student_init_as_teacher_equals_the_students_pooled_state(minilm_path):
    teacher = HuggingFaceTeacher(minilm_path, num_layers=3, pooling="mean", max_length=128)
    student = Student(minilm_path, fc1_dim=8, num_layers=3, max_length=128).eval()
    batch = student.tokenize(TEXTS)
    with torch.no_grad():
        pooled = F.normalize(student.pooled(batch["input_ids"], batch["attention_mask"]), dim=-1)
    assert torch.allclose(teacher.encode(TEXTS), pooled, atol=1e-5)


def test_sentence_transformer_teacher_with_prompt(minilm_path):
    plain = SentenceTransformerTeacher(minilm_path)
    prompted = SentenceTransformerTeacher(minilm_path, prompt="query: ")
    assert plain.dim == 384
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
