"""Jasper's vision tower (stage 4): a timm image encoder whose patch tokens become input embeddings of the student's
language model, pooled one of two ways (``pooling``):

    grid_projector (jasper's): patch tokens (B, N, D) -> grid (B, D, g, g) -> adaptive avg pool (B, k*k, D)
                               -> MLP (B, k*k, H)
    adaptive_avg (the released jasper_en_vision_language_v1): patch tokens (B, N, D) -> AdaptiveAvgPool2d((T, H))
                               over the token matrix -> (B, T, H); no parameters (released: T = 300, 729 SigLIP
                               tokens of width 1152 -> 300 tokens of Qwen2's 1536)

The image tokens enter the *same* language model as text tokens (``inputs_embeds``), wrapped in the special tokens
that the tokenizer puts around an empty text (``[CLS] ... [SEP]`` for BERT; nothing for most decoder tokenizers),
then go through the usual mean pooling, FC1 and heads: one model, one vector space.

    images -> timm ViT -> pooled tokens (B, T, H) -> [prefix] + tokens + [suffix] -> student encoder -> mean pool
           -> FC1 / heads

The tower is not part of the student: ``student.pt`` stays the text model that stages 1-3 and export read, and
``vision.pt`` beside it holds the tower (:func:`save_vision`, :func:`load_vision`). :class:`MultimodalStudent`
holds both as submodules (``.to()``, ``.eval()`` reach both) and encodes texts or images into the one space.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from jasper.core.disk import atomic_write, load_tensors
from jasper.models.student import FC1, Student

log = logging.getLogger(__name__)
VISION_FILE = "vision.pt"
POOLINGS = ("grid_projector", "adaptive_avg")


# Here rather than in data/: the tower's own preprocessing reads images, and data/images.py imports it from here.
def load_rgb(image: Image.Image | str | Path) -> Image.Image:
    """A PIL image in RGB from a path or an image (palette, grey, RGBA and CMYK images are converted)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a path or a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


class VisionTower(nn.Module):
    """timm backbone -> ``num_tokens`` image tokens of width ``embed_dim`` (the student's hidden size).

    ``model_name``: any timm ViT-style model with a patch grid (paper: ``vit_so400m_patch14_siglip_384``).
    ``pretrained``: load timm's weights (needs the hub or a local cache); the offline default is random.
    ``pooling``: ``grid_projector`` pools the patch grid to ``pool_size x pool_size`` tokens and projects them with
    an MLP (hidden width ``projector_hidden``, default ``embed_dim``); ``adaptive_avg`` is the released model's
    parameter-free ``AdaptiveAvgPool2d((num_tokens, embed_dim))`` over the ``(N, D)`` patch-token matrix: tokens
    averaged in raster order and the width resampled by averaging, so only the backbone learns (docs/vision.md).
    ``timm_kwargs``: passed to ``timm.create_model`` (``img_size``, ``patch_size``, ``depth``, ...).
    ``data_config``: overrides of timm's data config (``crop_pct``, ``interpolation``, ...).
    """

    def __init__(
        self,
        embed_dim: int,
        model_name: str = "vit_tiny_patch16_224",
        pretrained: bool = False,
        pool_size: int = 4,
        projector_hidden: int | None = None,
        timm_kwargs: dict | None = None,
        data_config: dict | None = None,
        pretrained_path: str | None = None,
        pooling: str = "grid_projector",
        num_tokens: int | None = None,
    ) -> None:
        super().__init__()
        import timm  # heavy (pulls in torchvision) and needed only where a tower is built: stage 4, image evaluation

        timm_kwargs = dict(timm_kwargs or {})
        if pretrained_path:  # a local weights file for users without hub access
            timm_kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
        if pooling not in POOLINGS:
            raise ValueError(
                f"vision.pooling={pooling!r}: choose grid_projector or adaptive_avg (docs/vision.md)"
            )
        if pooling == "grid_projector" and pool_size < 1:
            raise ValueError(f"vision.pool_size={pool_size} must be >= 1 (tokens per image: pool_size**2)")
        if pooling == "adaptive_avg" and (num_tokens is None or num_tokens < 1):
            raise ValueError(
                f"vision.pooling=adaptive_avg needs vision.num_tokens >= 1 (image tokens; released model: 300), "
                f"got {num_tokens}"
            )
        self.settings = {
            "model_name": model_name,
            "pool_size": pool_size,
            "projector_hidden": projector_hidden,
            "timm_kwargs": {k: v for k, v in timm_kwargs.items() if k != "pretrained_cfg_overlay"},
            "data_config": dict(data_config or {}),
            "embed_dim": embed_dim,
            "pooling": pooling,
            "num_tokens": num_tokens,
        }
        self.backbone = timm.create_model(
            model_name, pretrained=pretrained or bool(pretrained_path), num_classes=0, **timm_kwargs
        )
        if not hasattr(self.backbone, "forward_features"):
            raise ValueError(f"timm model {model_name} has no forward_features; use a ViT-style model")
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        self.pooling = pooling
        if pooling == "adaptive_avg":
            self.num_tokens = int(num_tokens)
            # (B, N, D) -> (B, T, H): averages over the tokens and over the width; no weights
            self.pool = nn.AdaptiveAvgPool2d((self.num_tokens, embed_dim))
            self.projector = None
        else:
            width = int(self.backbone.num_features)
            hidden = projector_hidden or embed_dim
            self.pool_size = pool_size
            self.num_tokens = pool_size**2
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.projector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self.data_config = self._data_config(data_config or {})
        self.transform = self._transform()

    def _data_config(self, overrides: dict) -> dict:
        from timm.data import resolve_data_config  # timm: see __init__

        config = resolve_data_config({}, model=self.backbone)
        img_size = getattr(getattr(self.backbone, "patch_embed", None), "img_size", None)
        if img_size is not None:  # a custom img_size is not in the pretrained config timm resolves from
            config["input_size"] = (3, *tuple(img_size))
        config.update(overrides)
        return config

    def _transform(self):
        from timm.data import create_transform  # timm: see __init__

        return create_transform(**self.data_config, is_training=False)

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> Tensor:
        """Paths or PIL images -> ``(B, 3, S, S)`` pixels, converted to RGB, with the tower's own transform."""
        return torch.stack([self.transform(load_rgb(image)) for image in images])

    def forward(self, pixels: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> image tokens in the student's input space ``(B, num_tokens, embed_dim)``."""
        tokens = self.backbone.forward_features(pixels)  # (B, prefix + N, D) or (B, D, h, w)
        convolutional = tokens.dim() == 4
        if self.projector is None:  # adaptive_avg: the released model's pooling, over the (N, D) token matrix
            patches = (
                tokens.flatten(2).transpose(1, 2) if convolutional else tokens[:, self.num_prefix_tokens :]
            )
            return self.pool(patches)  # (B, N, D) -> (B, T, embed_dim)
        grid = tokens if convolutional else square_grid(tokens[:, self.num_prefix_tokens :])  # (B, D, g, g)
        pooled = self.pool(grid).flatten(2).transpose(1, 2)  # (B, k*k, D)
        return self.projector(pooled)

    def describe(self) -> dict:
        """What it takes to rebuild this tower (saved next to its weights)."""
        return dict(self.settings)


def square_grid(patches: Tensor) -> Tensor:
    """Patch tokens ``(B, N, D)`` as their grid ``(B, D, g, g)`` (N = g * g)."""
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(len(patches), -1, side, side)


def wrap_tokens(student: Student, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``[prefix] + image tokens + [suffix]`` embeddings and their attention mask, ``(B, T, H)`` and ``(B, T)``.

    The prefix and suffix are the embeddings of the tokens the tokenizer puts around an empty text (with the
    student's prompt, if it has one): the language model sees images framed the way it sees texts.
    """
    ids = student.tokenize([""])["input_ids"][0].to(tokens.device)
    embed = student.encoder.get_input_embeddings()
    special = embed(ids).to(tokens.dtype)  # (S, H)
    split = len(ids) - 1 if len(ids) >= 2 else len(ids)
    prefix, suffix = special[:split], special[split:]
    batch = len(tokens)
    embeds = torch.cat(
        [prefix.expand(batch, -1, -1), tokens, suffix.expand(batch, -1, -1)], dim=1
    )  # (B, T, H)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=tokens.device)
    return embeds, mask


def image_vectors(
    student: Student, tower: VisionTower, pixels: Tensor, heads: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Normalised image vectors by head, through the student's language model (gradients flow to the tower)."""
    embeds, mask = wrap_tokens(student, tower(pixels))
    return student.project(student.pooled_from_embeds(embeds, mask), heads)


@torch.inference_mode()
def encode_images(
    student: Student,
    tower: VisionTower,
    images: Sequence[Image.Image | str | Path],
    head: str,
    batch_size: int = 64,
) -> Tensor:
    """Normalised vectors ``(N, d)`` (float32, CPU) of one head for images (paths or PIL), in order."""
    images = list(images)
    was_training = (student.training, tower.training)
    student.eval()
    tower.eval()
    device = next(tower.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = tower.preprocess(images[start : start + batch_size]).to(device)
        chunks.append(image_vectors(student, tower, pixels, heads=[head])[head].cpu())
    student.train(was_training[0])
    tower.train(was_training[1])
    return torch.cat(chunks) if chunks else torch.empty(0, student.head_dim(head))


class MultimodalStudent(nn.Module):
    """A student and its vision tower as one model: both are registered submodules, so ``.to()``, ``.eval()`` and
    ``.parameters()`` reach both. ``encode(texts)`` or ``encode(images=[...])`` (paths or PIL images) give vectors of
    the same space. Each part still saves on its own (``student.pt``, ``vision.pt``)."""

    def __init__(self, student: Student, vision: VisionTower) -> None:
        super().__init__()
        self.student = student
        self.vision = vision

    @property
    def head_names(self) -> list[str]:
        return self.student.head_names

    def head_dim(self, head: str) -> int:
        return self.student.head_dim(head)

    def encode(
        self,
        texts: Sequence[str] | None = None,
        head: str = FC1,
        batch_size: int = 64,
        show_progress: bool | None = None,
        images: Sequence[Image.Image | str | Path] | None = None,
    ) -> Tensor:
        """Normalised vectors ``(N, d)`` (float32, CPU) of one head, for texts or for images, in order."""
        if texts is not None and images is not None:
            raise ValueError("encode texts or images, not both in one call")
        if images is not None:
            if head not in self.head_names:
                raise KeyError(f"unknown head {head!r}; this student has {self.head_names}")
            return encode_images(self.student, self.vision, images, head, batch_size)
        if texts is None:
            raise ValueError("encode needs texts (or images=...)")
        return self.student.encode(texts, head, batch_size, show_progress)


def save_vision(tower: VisionTower, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": tower.describe(), "state_dict": tower.state_dict()}
    atomic_write(path, lambda file: torch.save(payload, file))  # crash-safe: temporary file, fsync, rename


def load_vision(path: str | Path, pretrained: bool = False) -> VisionTower:
    """Rebuild a tower from a ``vision.pt`` (written at the end of stage 4) and load its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no vision tower at {path}: stage 4 writes vision.pt next to student.pt")
    payload = load_tensors(path)  # weights_only: a shared vision.pt cannot run code
    tower = VisionTower(**payload["config"], pretrained=pretrained)
    tower.load_state_dict(payload["state_dict"])
    log.info("vision tower loaded from %s", path)
    return tower


def load_vision_weights(tower: VisionTower, path: str | Path) -> None:
    """Load a ``vision.pt`` or a stage-4 Lightning ``.ckpt`` into ``tower`` (same architecture)."""
    payload = load_tensors(path)
    state = payload["state_dict"]
    if "config" not in payload:  # a Lightning checkpoint: the tower's keys carry the module's prefix
        state = {k.removeprefix("vision."): v for k, v in state.items() if k.startswith("vision.")}
    tower.load_state_dict(state)
    log.info("vision tower initialised from %s", path)
