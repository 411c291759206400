"""The vision tower: shapes through BERT- and Qwen2-style students, encode(images), saving and loading."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from jasper.models.student import FC1, Student
from jasper.models.vision import (
    MultimodalStudent,
    VisionTower,
    encode_images,
    image_vectors,
    load_vision,
    save_vision,
    wrap_tokens,
)

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_tower(embed_dim: int, seed: int = 0) -> VisionTower:
    torch.manual_seed(seed)
    return VisionTower(embed_dim, pool_size=2, timm_kwargs=TINY_VIT, data_config={"crop_pct": 1.0})


def images() -> list[Image.Image]:
    """RGB, grey, RGBA and palette images: every mode is converted to RGB."""
    return [
        Image.new("RGB", (40, 30), (200, 10, 10)),
        Image.new("L", (32, 32), 128),
        Image.new("RGBA", (50, 50), (0, 0, 255, 128)),
        Image.new("P", (32, 32), 3),
    ]


@pytest.mark.parametrize("encoder", ["tiny_bert", "tiny_qwen2"])
def test_image_tokens_go_through_the_language_model(encoder, request):
    student = Student(request.getfixturevalue(encoder), fc1_dim=24, mrl_dims=[8, 4])
    tower = tiny_tower(student.encoder.config.hidden_size)
    pixels = tower.preprocess(images())
    assert pixels.shape == (4, 3, 32, 32)
    tokens = tower(pixels)
    assert tokens.shape == (4, 4, 32)  # 2x2 pooled tokens in the student's input space
    vectors = image_vectors(student, tower, pixels)
    assert {k: tuple(v.shape) for k, v in vectors.items()} == {FC1: (4, 24), "8": (4, 8), "4": (4, 4)}
    assert torch.allclose(vectors[FC1].norm(dim=-1), torch.ones(4), atol=1e-5)
    vectors[FC1].sum().backward()  # gradients reach the tower through the language model
    assert tower.projector[0].weight.grad is not None and tower.projector[0].weight.grad.abs().sum() > 0


def test_encode_images_is_deterministic_and_comparable_with_text(tiny_bert, tmp_path):
    student = MultimodalStudent(Student(tiny_bert, fc1_dim=16, mrl_dims=[8]), tiny_tower(32))
    path = tmp_path / "red.png"
    images()[0].save(path)
    first = student.encode(images=[path, *images()[1:]])
    second = student.encode(images=[images()[0], *images()[1:]], batch_size=2)
    assert first.shape == (4, 16)
    assert torch.allclose(first, second, atol=1e-5)  # path or PIL, any batch size: the same vectors
    assert student.encode(images=images()[:1], head="8").shape == (1, 8)
    # The same space as texts: a tower that emitted a text's own token embeddings would be framed by the same
    # special tokens and go through the same layers and head, so it gets exactly the text's vector.
    text = "a red image"
    inner = student.student.tokenize([text])["input_ids"][0][1:-1]  # without [CLS] ... [SEP]
    tokens = student.student.encoder.get_input_embeddings()(inner)[None]  # (1, T, H)
    student.eval()
    with torch.no_grad():
        as_image = student.student.project(
            student.student.pooled_from_embeds(*wrap_tokens(student.student, tokens))
        )
    torch.testing.assert_close(as_image["8"], student.encode([text], head="8"), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        student.encode(["text"], images=images())


def test_tower_is_not_part_of_student_pt_and_round_trips(tiny_bert, tmp_path):
    student = Student(tiny_bert, fc1_dim=16)
    tower = tiny_tower(32, seed=3)
    model = MultimodalStudent(student, tower)
    assert not any(k.startswith("vision") for k in student.state_dict())  # student.pt stays the text model
    assert {k.split(".")[0] for k in model.state_dict()} == {"student", "vision"}  # both are submodules
    model.eval()
    assert not student.training and not tower.training  # .eval() reaches the tower
    save_vision(tower, tmp_path / "vision.pt")
    loaded = load_vision(tmp_path / "vision.pt")
    before = encode_images(student, tower, images(), FC1)
    after = encode_images(student, loaded, images(), FC1)
    assert torch.allclose(before, after, atol=1e-6)


def test_adaptive_avg_pooling_is_the_released_models_parameter_free_pool(tmp_path):
    """pooling=adaptive_avg: AdaptiveAvgPool2d((T, H)) over the (N, D) patch-token matrix, as the released
    jasper_en_vision_language_v1 (729 x 1152 -> 300 x 1536): token i of width j averages patches
    floor(iN/T)..ceil((i+1)N/T) and channels floor(jD/H)..ceil((j+1)D/H) (written out here, uneven windows). No
    parameters beyond the backbone, which gets the gradient; vision.pt keeps the choice."""
    torch.manual_seed(0)
    tower = VisionTower(48, pooling="adaptive_avg", num_tokens=3, timm_kwargs=TINY_VIT)
    assert tower.projector is None and tower.num_tokens == 3
    assert {name.split(".")[0] for name, _ in tower.named_parameters()} == {"backbone"}
    pixels = tower.preprocess(images())
    tokens = tower(pixels)
    assert tokens.shape == (4, 3, 48)
    patches = tower.backbone.forward_features(pixels)[:, tower.num_prefix_tokens :]  # (4, 16, 32)
    n, d = patches.shape[1:]
    expected = torch.stack(
        [
            torch.stack(
                [
                    patches[
                        :, (i * n) // 3 : -(-(i + 1) * n // 3), (j * d) // 48 : -(-(j + 1) * d // 48)
                    ].mean((1, 2))
                    for j in range(48)
                ],
                dim=-1,
            )
            for i in range(3)
        ],
        dim=1,
    )
    torch.testing.assert_close(tokens, expected)
    tokens.sum().backward()
    assert tower.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    save_vision(tower, tmp_path / "vision.pt")
    loaded = load_vision(tmp_path / "vision.pt")
    assert loaded.pooling == "adaptive_avg" and loaded.num_tokens == 3
    torch.testing.assert_close(loaded(pixels), tokens.detach())
    with pytest.raises(ValueError, match="needs vision.num_tokens"):
        VisionTower(48, pooling="adaptive_avg", timm_kwargs=TINY_VIT)
    with pytest.raises(ValueError, match="vision.pooling='mlp'"):
        VisionTower(48, pooling="mlp", timm_kwargs=TINY_VIT)
