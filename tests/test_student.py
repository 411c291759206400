import pytest
import torch

from jasper.models.encoders import is_checkpointing, mean_pool
from jasper.models.student import FC1, Student


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


@pytest.mark.parametrize("count", [1, 5, 33])
@pytest.mark.parametrize("mode", ["separate", "prefix"])
def test_heads_from_one_pooled_encoding_equal_the_plain_forward(tiny_bert, count, mode):
    """encode_pooled + project_pooled (one encoder pass for every head: report.py) against the forward on all
    texts at once, each head; random texts of random lengths; atol 1e-5 (batching reorders float sums)."""
    import random

    rng = random.Random(count)
    words = "cat dog runs the a quickly over blue sky river stone".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 20))) for _ in range(count)]
    student = Student(tiny_bert, fc1_dim=32, mrl_dims=[16, 8], mrl_mode=mode).eval()
    batch = student.tokenize(texts)
    with torch.no_grad():
        reference = student(batch["input_ids"], batch["attention_mask"])
    pooled = student.encode_pooled(texts, batch_size=4)
    assert pooled.shape == (count, student.fc1.in_features) and pooled.dtype == torch.float32
    shared = student.project_pooled(pooled)
    for head in student.head_names:
        assert torch.allclose(shared[head], reference[head], atol=1e-5)
        assert torch.allclose(student.encode(texts, head=head, batch_size=3), reference[head], atol=1e-5)


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


@pytest.mark.parametrize(("model", "prefix"), [("tiny_bert", "encoder.layer."), ("tiny_qwen2", "layers.")])
def test_layers_picks_those_layers_as_a_renumbered_state_dict_would(model, prefix, request):
    """The reference: the usual layer-reduction recipe, a smaller config loaded with the chosen layers' weights
    renumbered. Same weights, same hidden states (atol 1e-5)."""
    from transformers import AutoConfig, AutoModel

    path = request.getfixturevalue(model)
    chosen = [0, 2, 3]
    student = Student(path, fc1_dim=8, layers=chosen, max_length=32).eval()
    full = AutoModel.from_pretrained(path).state_dict()
    config = AutoConfig.from_pretrained(path, num_hidden_layers=len(chosen))
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[: len(chosen)]
    renamed = {}
    for key, value in full.items():
        if not key.startswith(prefix):
            renamed[key] = value
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        if int(index) in chosen:
            renamed[f"{prefix}{chosen.index(int(index))}.{rest}"] = value
    reference = AutoModel.from_config(config, attn_implementation=student.encoder.config._attn_implementation)
    reference.load_state_dict(renamed)
    reference.eval()
    assert student.encoder.config.num_hidden_layers == 3 and student.describe()["num_layers"] == 3
    batch = student.tokenize(["a small dog runs", "the definition of a word, in a dictionary"])
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        ours = student.encoder(**inputs).last_hidden_state
        theirs = reference(**inputs).last_hidden_state
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_student_from_chosen_layers_rebuilds_from_its_description(tiny_bert):
    """describe() records the choice: a rebuilt student (the evaluation's fresh init) starts from the same layers,
    and with the saved weights loaded it is the same student."""
    student = Student(tiny_bert, fc1_dim=8, mrl_dims=[4], layers=[1, 3], max_length=32).eval()
    assert (student.describe()["num_layers"], student.describe()["layers"]) == (2, [1, 3])
    fresh = Student(**student.describe()).eval()
    assert torch.equal(
        fresh.encoder.encoder.layer[1].output.dense.weight, student.layers[1].output.dense.weight
    )
    fresh.load_state_dict(student.state_dict())
    batch = student.tokenize(["one text", "and another one"])
    with torch.no_grad():
        inputs = (batch["input_ids"], batch["attention_mask"])
        assert torch.equal(student(*inputs)["fc1"], fresh(*inputs)["fc1"])
    assert "layers" not in Student(tiny_bert, fc1_dim=8, num_layers=2).describe()  # older checkpoints' shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [2, 0]}, r"increasing order"),
        ({"layers": [0, 0]}, r"each once"),
        ({"layers": [0, 4]}, r"0\.\.3"),
        ({"layers": []}, r"model\.layers=\[\]"),
        (
            {"layers": [0, 2], "num_layers": 3},
            r"set model\.layers=null to keep the first 3, or model\.num_layers=2",
        ),
    ],
)
def test_bad_layer_choice_fails_early(tiny_bert, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Student(tiny_bert, fc1_dim=8, **kwargs)


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


TINY_QWEN2 = {
    "model_type": "qwen2",
    "vocab_size": 30522,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def test_student_from_config_alone_has_random_weights_and_the_given_tokenizer(minilm_path):
    torch.manual_seed(0)
    student = Student(None, fc1_dim=16, mrl_dims=[8], encoder_config=TINY_QWEN2, tokenizer=minilm_path)
    assert type(student.encoder).__name__ == "Qwen2Model" and len(student.layers) == 3
    assert student.encoder.config.use_cache is False  # an encoder keeps no key/value cache
    assert student.tokenizer.vocab_size == 30522
    vectors = student.encode(["a text", "another one"], head="8")
    assert vectors.shape == (2, 8)
    described = student.describe()
    assert described["encoder_config"] == TINY_QWEN2 and described["tokenizer"] == minilm_path
    torch.manual_seed(1)
    again = Student(**described)  # describe() rebuilds it (as export/load_student do)
    again.load_state_dict(student.state_dict())
    assert torch.equal(again.encode(["a text", "another one"], head="8"), vectors)


def test_the_qwen2_1_5b_random_config_has_stellas_shape(minilm_path):
    from transformers import AutoConfig

    from tests.test_config import compose_train

    cfg = compose_train(["model=qwen2_1_5b_random"])
    fields = dict(cfg.model.encoder_config)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):  # no memory, no time: only the parameter count
        from transformers import AutoModel

        model = AutoModel.from_config(config)
    assert 1.50e9 < sum(p.numel() for p in model.parameters()) < 1.56e9  # Qwen2-1.5B: 1.54B
    assert cfg.model.model_name_or_path is None and cfg.model.tokenizer == minilm_path


def test_encoder_config_and_model_path_are_exclusive(tiny_qwen2):
    with pytest.raises(ValueError, match="not both"):
        Student(tiny_qwen2, fc1_dim=8, encoder_config=TINY_QWEN2)
    with pytest.raises(ValueError, match="model.tokenizer"):
        Student(None, fc1_dim=8, encoder_config=TINY_QWEN2)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_qwen2"])
def test_gradient_checkpointing_gives_the_same_gradients(model, request):
    """Also through frozen lower layers (stage 2): non-reentrant checkpointing still reaches the top layers."""
    path = request.getfixturevalue(model)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        student = Student(path, fc1_dim=16, gradient_checkpointing=checkpointing).train()
        for parameter in student.layers[0].parameters():
            parameter.requires_grad_(False)
        student.encoder.config.hidden_dropout_prob = 0.0
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        batch = student.tokenize(["a short text", "a somewhat longer text about cats and dogs"])
        student(batch["input_ids"], batch["attention_mask"])["fc1"].sum().backward()
        top = student.layers[-1]
        grads.append(torch.cat([p.grad.flatten() for p in top.parameters()]))
        assert is_checkpointing(student.encoder) == checkpointing
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_attn_implementation(tiny_qwen2, monkeypatch):
    student = Student(tiny_qwen2, fc1_dim=8, attn_implementation="eager")
    assert student.encoder.config._attn_implementation == "eager"
    assert (
        Student(tiny_qwen2, fc1_dim=8, attn_implementation="sdpa").encoder.config._attn_implementation
        == "sdpa"
    )
    with pytest.raises(ValueError, match="attn_implementation"):
        Student(tiny_qwen2, fc1_dim=8, attn_implementation="fast")
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    with pytest.raises(ImportError, match="model.attn_implementation=sdpa"):
        Student(tiny_qwen2, fc1_dim=8, attn_implementation="flash_attention_2")
