import pytest
import torch

from jasper.student import FC1, Student, mean_pool


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_qwen2"])
def test_heads_shapes_and_norms(model, request):
    student = Student(request.getfixturevalue(model), fc1_dim=48, mrl_dims=[16, 8], num_layers=2)
    assert len(student.layers) == 2
    batch = student.tokenize(["a short text", "a somewhat longer text about cats and dogs"])
    vectors = student(batch["input_ids"], batch["attention_mask"])
    assert {name: tuple(v.shape) for name, v in vectors.items()} == {FC1: (2, 48), "16": (2, 16), "8": (2, 8)}
    for v in vectors.values():
        assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_qwen2"])
def test_encode_matches_single_text_and_keeps_order(model, request):
    student = Student(request.getfixturevalue(model), fc1_dim=24, mrl_dims=[8])
    texts = ["one", "two words here and more words to pad the batch", "three is a medium text"]
    together = student.encode(texts, head="8", batch_size=2)
    alone = torch.cat([student.encode([t], head="8") for t in texts])
    assert together.shape == (3, 8)
    assert torch.allclose(together, alone, atol=1e-5)  # padding and batching change nothing


def test_prefix_mode_truncates_fc1(tiny_bert):
    student = Student(tiny_bert, fc1_dim=32, mrl_dims=[8], mrl_mode="prefix")
    assert len(student.heads) == 0
    batch = student.tokenize(["hello world"])
    raw = student.fc1(student.pooled(batch["input_ids"], batch["attention_mask"]))
    expected = torch.nn.functional.normalize(raw[:, :8], dim=-1)
    assert torch.allclose(student(batch["input_ids"], batch["attention_mask"])["8"], expected, atol=1e-6)


def test_num_layers_keeps_first_layers_of_pretrained(minilm_path):
    from transformers import AutoModel

    full = AutoModel.from_pretrained(minilm_path)
    student = Student(minilm_path, fc1_dim=8, num_layers=3)
    assert len(student.layers) == 3
    for i in range(3):
        assert torch.equal(student.layers[i].output.dense.weight, full.encoder.layer[i].output.dense.weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mrl_dims": [0]}, "non-positive"),
        ({"mrl_dims": [-4]}, "non-positive"),
        ({"mrl_dims": [8, 8]}, "repeats"),
        ({"mrl_dims": [64], "mrl_mode": "prefix"}, "prefix"),
        ({"mrl_mode": "nested"}, "mrl_mode"),
        ({"num_layers": 9}, "num_layers"),
        ({"fc1_dim": 0}, "FC1"),
    ],
)
def test_bad_head_config_fails_early(tiny_bert, kwargs, message):
    arguments = {"fc1_dim": 32, **kwargs}
    with pytest.raises(ValueError, match=message):
        Student(tiny_bert, **arguments)


def test_unknown_head(tiny_bert):
    student = Student(tiny_bert, fc1_dim=16, mrl_dims=[8])
    with pytest.raises(KeyError, match="unknown head"):
        student.encode(["x"], head="4")
