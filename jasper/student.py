"""The student: a Hugging Face encoder, masked mean pooling, FC1 to the teacher dimension, and MRL heads.

Jasper's student is stella_en_1.5B_v5 (Qwen2) with FC1 -> 12288 and extra heads FC2-FC4 (1024/512/256). Any
``AutoModel`` encoder works here, BERT-style or decoder-style.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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


ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(attn_implementation: str | None) -> None:
    """``model.attn_implementation``: sdpa (default), eager, or flash_attention_2 where the flash-attn package is
    installed (it needs a CUDA GPU and bf16/fp16 weights)."""
    if attn_implementation is None:
        return
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"model.attn_implementation={attn_implementation!r} is not one of {ATTN_IMPLEMENTATIONS} (or null for "
            "transformers' default)"
        )
    if attn_implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ImportError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA GPU, and "
                "flash-attn is not installed here: pip install flash-attn, or use model.attn_implementation=sdpa"
            )


def _keep_layers(config, num_layers: int | None, source: str):
    """``config`` cut to its first ``num_layers`` layers (``None``: all of them)."""
    if num_layers is None:
        return config
    total = config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(
            f"model.num_layers={num_layers} but {source} has {total} layers: choose 1..{total}, "
            "or null to keep them all"
        )
    config.num_hidden_layers = num_layers
    # Decoder configs (Qwen2, ...) carry one entry per layer; it must shrink with the layer count.
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:num_layers]
    return config


def load_encoder(
    model_name_or_path: str | None,
    num_layers: int | None = None,
    revision: str | None = None,
    encoder_config: Mapping | None = None,
    attn_implementation: str | None = None,
) -> nn.Module:
    """``AutoModel`` keeping only the first ``num_layers`` layers (a small student initialised from a bigger model).

    ``encoder_config`` (a transformers config as a mapping with its ``model_type``) instead of a model path builds
    the encoder from the config alone, with random weights: nothing is read or downloaded. The encoder runs as an
    encoder: decoders (Qwen2, ...) keep no key/value cache.
    """
    check_attn_implementation(attn_implementation)
    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if encoder_config is not None:
        if model_name_or_path is not None:
            raise ValueError(
                "give model.model_name_or_path (pretrained weights) or model.encoder_config (random weights from a "
                "config), not both: set the other to null"
            )
        fields = dict(encoder_config)
        if "model_type" not in fields:
            raise ValueError("model.encoder_config needs a model_type (e.g. qwen2, bert)")
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        config = _keep_layers(config, num_layers, "model.encoder_config")
        config.use_cache = False
        return AutoModel.from_config(config, **attention)
    if model_name_or_path is None:
        raise ValueError(
            "model.model_name_or_path is null and no model.encoder_config is given: set one of them"
        )
    check_model_path(model_name_or_path)
    config = AutoConfig.from_pretrained(model_name_or_path, revision=revision)
    config.use_cache = False
    if num_layers is not None:
        config = _keep_layers(config, num_layers, model_name_or_path)
        # Layers beyond num_layers are simply not loaded: silence transformers' report of them as unused weights.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return AutoModel.from_pretrained(
                model_name_or_path, config=config, revision=revision, **attention
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    return AutoModel.from_pretrained(model_name_or_path, config=config, revision=revision, **attention)


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

    Large students: ``encoder_config`` (with ``model_name_or_path=None``) builds the encoder from a config alone,
    random weights, and ``tokenizer`` names the tokenizer folder (``conf/model/qwen2_1_5b_random.yaml``);
    ``gradient_checkpointing`` recomputes each layer's activations in the backward pass (less memory, about a
    third more compute); ``attn_implementation``: ``sdpa`` (the configs' default), ``eager``, ``flash_attention_2``,
    or ``None`` for transformers' own choice (sdpa where the architecture has it).
    """

    def __init__(
        self,
        model_name_or_path: str | None,
        fc1_dim: int,
        mrl_dims: Sequence[int] = (),
        mrl_mode: str = "separate",
        num_layers: int | None = None,
        max_length: int = 512,
        prompt: str = "",
        revision: str | None = None,
        encoder_config: Mapping | None = None,
        tokenizer: str | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        mrl_dims = [int(d) for d in mrl_dims]
        _check_heads(fc1_dim, mrl_dims, mrl_mode)
        self.model_name_or_path = model_name_or_path
        self.encoder_config = _plain(encoder_config)
        self.tokenizer_path = tokenizer
        self.fc1_dim = fc1_dim
        self.mrl_dims = mrl_dims
        self.mrl_mode = mrl_mode
        self.max_length = max_length
        self.prompt = prompt
        self.encoder = load_encoder(
            model_name_or_path, num_layers, revision, self.encoder_config, attn_implementation
        )
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.encoder)
        if tokenizer is None and model_name_or_path is None:
            raise ValueError(
                "a student built from model.encoder_config needs model.tokenizer (a tokenizer folder or hub id)"
            )
        tokenizer_revision = revision if tokenizer is None else None
        self.tokenizer = AutoTokenizer.from_pretrained(
            tokenizer or model_name_or_path, revision=tokenizer_revision
        )
        if self.tokenizer.pad_token is None:  # decoder tokenisers often have none; padding is masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        hidden = self.encoder.config.hidden_size
        self.fc1 = nn.Linear(hidden, fc1_dim)
        self.heads = nn.ModuleDict(
            {str(d): nn.Linear(hidden, d) for d in mrl_dims} if mrl_mode == "separate" else {}
        )
        # Separate heads that hold no trained weights yet: stage 3 starts these (and only these) from FC1.
        self.fresh_heads: set[str] = set(self.heads)
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
            **({"encoder_config": self.encoder_config} if self.encoder_config is not None else {}),
            **({"tokenizer": self.tokenizer_path} if self.tokenizer_path is not None else {}),
        }


def enable_gradient_checkpointing(encoder: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass. Non-reentrant, so layers whose input needs no
    gradient (the first trained layer of stage 2, above frozen ones) still give their parameters gradients."""
    if not getattr(encoder, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(encoder).__name__} does not support gradient checkpointing: set model.gradient_checkpointing=false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(
        encoder, "activation_checkpointing_enable"
    ):  # transformers >= 5.2x; the old name is deprecated
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(encoder: nn.Module) -> bool:
    """Whether ``encoder`` recomputes activations in the backward pass (either transformers name of the flag)."""
    flag = getattr(type(encoder), "is_activation_checkpointing", None)
    return bool(
        encoder.is_activation_checkpointing if flag is not None else encoder.is_gradient_checkpointing
    )


def _plain(value):
    """A config value (OmegaConf nodes from Hydra included) as plain dicts and lists, so it saves with the weights."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


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
