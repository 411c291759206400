"""The student: a Hugging Face encoder, masked mean pooling, FC1 to the teacher dimension, and MRL heads.

Jasper's student is stella_en_1.5B_v5 (Qwen2) with FC1 -> 12288 and extra heads FC2-FC4 (1024/512/256). Any
``AutoModel`` encoder works here, BERT-style or decoder-style.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)

FC1 = "fc1"
MRL_MODES = ("separate", "prefix")


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average the token states that the mask keeps: ``(B, L, H), (B, L) -> (B, H)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def check_model_path(model_name_or_path: str) -> None:
    """A path that is clearly local (absolute, ./, ../, ~) must exist; anything else is a hub id."""
    if (
        str(model_name_or_path).startswith(("/", "./", "../", "~"))
        and not Path(model_name_or_path).expanduser().exists()
    ):
        raise FileNotFoundError(
            f"model folder {model_name_or_path} does not exist: fix model_name_or_path in the student or teachers "
            "config (a local folder, or a hub id such as NovaSearch/stella_en_1.5B_v5)"
        )


def load_encoder(
    model_name_or_path: str, num_layers: int | None = None, revision: str | None = None
) -> nn.Module:
    """``AutoModel`` keeping only the first ``num_layers`` layers (a small student initialised from a bigger model)."""
    check_model_path(model_name_or_path)
    config = AutoConfig.from_pretrained(model_name_or_path, revision=revision)
    if num_layers is not None:
        total = config.num_hidden_layers
        if not 1 <= num_layers <= total:
            raise ValueError(
                f"model.num_layers={num_layers} but {model_name_or_path} has {total} layers: choose 1..{total}, "
                "or null to keep them all"
            )
        config.num_hidden_layers = num_layers
        # Decoder configs (Qwen2, ...) carry one entry per layer; it must shrink with the layer count.
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types)[:num_layers]
        # Layers beyond num_layers are simply not loaded: silence transformers' report of them as unused weights.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return AutoModel.from_pretrained(model_name_or_path, config=config, revision=revision)
        finally:
            hf_logging.set_verbosity(verbosity)
    return AutoModel.from_pretrained(model_name_or_path, config=config, revision=revision)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers, whatever the architecture calls it."""
    count = encoder.config.num_hidden_layers
    for _, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} transformer layers of {type(encoder).__name__}")


class Student(nn.Module):
    """Encoder -> mean pooling -> FC1 (teacher dimension) and one head per MRL dimension.

    ``mrl_mode="separate"`` (Jasper): each dimension has its own linear head on the pooled state.
    ``mrl_mode="prefix"`` (Matryoshka): each dimension is the first ``d`` entries of FC1's output.
    ``forward`` returns L2-normalised vectors by head name: ``"fc1"`` and ``str(d)`` for each MRL dimension.
    """

    def __init__(
        self,
        model_name_or_path: str,
        fc1_dim: int,
        mrl_dims: Sequence[int] = (),
        mrl_mode: str = "separate",
        num_layers: int | None = None,
        max_length: int = 512,
        prompt: str = "",
        revision: str | None = None,
    ) -> None:
        super().__init__()
        mrl_dims = [int(d) for d in mrl_dims]
        _check_heads(fc1_dim, mrl_dims, mrl_mode)
        self.model_name_or_path = model_name_or_path
        self.fc1_dim = fc1_dim
        self.mrl_dims = mrl_dims
        self.mrl_mode = mrl_mode
        self.max_length = max_length
        self.prompt = prompt
        self.encoder = load_encoder(model_name_or_path, num_layers, revision)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, revision=revision)
        if self.tokenizer.pad_token is None:  # decoder tokenisers often have none; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        hidden = self.encoder.config.hidden_size
        self.fc1 = nn.Linear(hidden, fc1_dim)
        self.heads = nn.ModuleDict(
            {str(d): nn.Linear(hidden, d) for d in mrl_dims} if mrl_mode == "separate" else {}
        )
        self.encoder_frozen = False
        self.__dict__["vision"] = (
            None  # an attached VisionTower (stage 4), not a submodule: see attach_vision
        )

    @property
    def head_names(self) -> list[str]:
        return [FC1] + [str(d) for d in self.mrl_dims]

    @property
    def layers(self) -> nn.ModuleList:
        return encoder_layers(self.encoder)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        texts = [self.prompt + t for t in texts] if self.prompt else list(texts)
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def pooled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean-pooled last hidden state: ``(B, L) -> (B, H)``. Runs without autograd while the encoder is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pool(hidden, attention_mask)

    def project(self, pooled: Tensor, heads: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Normalised vectors of the requested heads (all by default) from pooled states ``(B, H)``."""
        heads = self.head_names if heads is None else list(heads)
        unknown = set(heads) - set(self.head_names)
        if unknown:
            raise KeyError(f"unknown head(s) {sorted(unknown)}; this student has {self.head_names}")
        out: dict[str, Tensor] = {}
        fc1 = self.fc1(pooled) if FC1 in heads or self.mrl_mode == "prefix" else None
        for name in heads:
            if name == FC1:
                vector = fc1
            elif self.mrl_mode == "prefix":
                vector = fc1[:, : int(name)]
            else:
                vector = self.heads[name](pooled)
            out[name] = F.normalize(vector.float(), dim=-1)
        return out

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, heads: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        return self.project(self.pooled(input_ids, attention_mask), heads)

    def pooled_from_embeds(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean-pooled last hidden state of input embeddings ``(B, T, H), (B, T) -> (B, H)`` (stage 4's image tokens).

        Autograd stays on even when the encoder is frozen: the gradient must reach the embeddings (the vision tower).
        """
        hidden = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def attach_vision(self, tower: nn.Module | None) -> None:
        """Let ``encode(images=...)`` use ``tower`` (a :class:`jasper.vision.VisionTower`). The tower is referenced,
        not registered: ``state_dict()`` and ``student.pt`` stay the text model (the tower saves as ``vision.pt``)."""
        self.__dict__["vision"] = tower

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str] | None = None,
        head: str = FC1,
        batch_size: int = 64,
        show_progress: bool | None = None,
        images: Sequence | None = None,
    ) -> Tensor:
        """Normalised vectors ``(N, d)`` (float32, CPU) of one head, in the order of ``texts``.

        ``images=[...]`` (paths or PIL images) instead of texts: vectors of the same space through the attached
        vision tower (:meth:`attach_vision`, stage 4).
        """
        if head not in self.head_names:
            raise KeyError(f"unknown head {head!r}; this student has {self.head_names}")
        if images is not None:
            if texts is not None:
                raise ValueError("encode texts or images, not both in one call")
            if self.vision is None:
                raise ValueError(
                    "encode(images=...) needs a vision tower: student.attach_vision(jasper.vision.load_vision(path))"
                )
            from jasper.vision import encode_images

            return encode_images(self, self.vision, images, head, batch_size)
        if texts is None:
            raise ValueError("encode needs texts (or images=...)")
        texts = list(texts)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        # Batches of similar length pad less; the original order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        show = len(texts) > 10 * batch_size if show_progress is None else show_progress
        chunks = []
        for start in tqdm(range(0, len(texts), batch_size), desc=f"encode ({head})", disable=not show):
            batch = self.tokenize([texts[i] for i in order[start : start + batch_size]]).to(device)
            chunks.append(self(batch["input_ids"], batch["attention_mask"], heads=[head])[head].cpu())
        self.train(was_training)
        vectors = torch.cat(chunks) if chunks else torch.empty(0, self.head_dim(head))
        return vectors[torch.argsort(torch.tensor(order))] if order else vectors

    def head_dim(self, head: str) -> int:
        return self.fc1_dim if head == FC1 else int(head)

    def describe(self) -> dict:
        """What it takes to rebuild this student (saved next to its weights)."""
        return {
            "model_name_or_path": self.model_name_or_path,
            "fc1_dim": self.fc1_dim,
            "mrl_dims": list(self.mrl_dims),
            "mrl_mode": self.mrl_mode,
            "num_layers": self.encoder.config.num_hidden_layers,
            "max_length": self.max_length,
            "prompt": self.prompt,
        }


def _check_heads(fc1_dim: int, mrl_dims: list[int], mrl_mode: str) -> None:
    if mrl_mode not in MRL_MODES:
        raise ValueError(f"model.mrl_mode={mrl_mode!r} is not one of {MRL_MODES}")
    if fc1_dim <= 0:
        raise ValueError(f"FC1 dimension {fc1_dim} must be positive (it is the teachers' total dimension)")
    bad = [d for d in mrl_dims if d <= 0]
    if bad:
        raise ValueError(f"model.mrl_dims has non-positive dimension(s) {bad}; every head needs a size >= 1")
    if len(set(mrl_dims)) != len(mrl_dims):
        raise ValueError(f"model.mrl_dims={mrl_dims} repeats a dimension; each head needs its own size")
    if mrl_mode == "prefix":
        too_big = [d for d in mrl_dims if d > fc1_dim]
        if too_big:
            raise ValueError(
                f"model.mrl_mode=prefix truncates FC1's {fc1_dim}-d output, but model.mrl_dims has {too_big}: "
                f"use dimensions <= {fc1_dim}, or model.mrl_mode=separate for heads of any size"
            )
