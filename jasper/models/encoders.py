"""What every model in jasper shares, below all of them: loading a Hugging Face encoder, pooling its token states,
encoding many texts in length-sorted chunks, checking vectors.

The student (:mod:`jasper.models.student`), the teachers (:mod:`jasper.models.teachers`), the vision tower (:mod:`jasper.models.vision`),
the cache and the evaluation all use these; none of them is imported here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import transformers.utils as hf_utils
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from jasper.models.model_files import check_hub_id

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
CHUNK_BATCHES = 4
"""Texts handed to an encoder per call, in batches: ``encode_all`` sorts all texts longest first, then gives an
encoder ``CHUNK_BATCHES * batch_size`` texts at a time (it splits them into its own batches, which are therefore the
same for any multiple), so progress moves and memory peaks on the first, longest chunk."""


# Pooling.
def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average the token states that the mask keeps: ``(B, L, H), (B, L) -> (B, H)``.

    >>> mean_pool(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


# Loading.
def check_model_path(model_name_or_path: str) -> None:
    """A path that is clearly local (absolute, ./, ../, ~) must exist; anything else not on disk is a hub id, which
    must be one this run can load (:func:`jasper.models.model_files.check_hub_id`: fails fast, naming it)."""
    path = Path(model_name_or_path).expanduser()
    if str(model_name_or_path).startswith(("/", "./", "../", "~")) and not path.exists():
        raise FileNotFoundError(
            f"model folder {model_name_or_path} does not exist: fix model_name_or_path in the student or teachers "
            "config (a local folder, or a hub id such as NovaSearch/stella_en_1.5B_v5)"
        )
    if not path.exists():
        check_hub_id(str(model_name_or_path))


def tokenizer_type(tokenizer, model_type: str) -> str | None:
    """The tokenizer's model type (``bert``) when loading a saved ``model_type`` model with this tokenizer needs it
    named: a model built from one architecture's config with another's tokenizer (``model=qwen2_1_5b_random``:
    Qwen2 + MiniLM's tokenizer). transformers 5 loads the tokenizer class registered for some model types (qwen2
    among them) whatever tokenizer_config.json says; ``tokenizer_type`` overrides that. ``None`` when the folder
    loads as it is (jasper.exporting names it in the export)."""
    # transformers' tokenizer registry: slow to import, and only this check needs it
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    def plain(name) -> str:
        name = next((n for n in name if n), "") if isinstance(name, tuple) else name or ""
        return name.removesuffix("Fast")

    own = plain(type(tokenizer).__name__)
    registered = TOKENIZER_MAPPING_NAMES.get(model_type)
    if registered is None or plain(registered) == own:
        return None
    kinds = [kind for kind, name in TOKENIZER_MAPPING_NAMES.items() if plain(name) == own]
    named = own.removesuffix("Tokenizer").lower()  # BertTokenizer -> bert, not the first match (align)
    return named if named in kinds else next(iter(kinds), None)


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
    if attn_implementation == "flash_attention_2" and not hf_utils.is_flash_attn_2_available():
        raise ImportError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA GPU, and "
            "flash-attn is not installed here: pip install flash-attn, or use model.attn_implementation=sdpa"
        )


def chosen_layers(
    num_layers: int | None, layers: Sequence[int] | None, total: int, source: str
) -> list[int] | None:
    """The indices of the layers a model keeps: ``layers`` as given, else the first ``num_layers``; ``None``: all."""
    if layers is None:
        if num_layers is None:
            return None
        if not 1 <= num_layers <= total:
            raise ValueError(
                f"model.num_layers={num_layers} but {source} has {total} layers: choose 1..{total}, "
                "or null to keep them all"
            )
        return list(range(num_layers))
    chosen = [int(i) for i in layers]
    if not chosen or any(not 0 <= i < total for i in chosen) or chosen != sorted(set(chosen)):
        raise ValueError(
            f"model.layers={chosen} must name layers of {source} in increasing order, each once, from 0..{total - 1} "
            "(e.g. [0, 2, 5]); or set it to null to keep the first model.num_layers"
        )
    check_layer_count(num_layers, chosen)
    return chosen


def check_layer_count(num_layers: int | None, layers: Sequence[int] | None) -> None:
    """``model.num_layers`` and ``model.layers`` must agree when both are set (checked from the config alone)."""
    if num_layers is not None and layers is not None and num_layers != len(layers):
        chosen = [int(i) for i in layers]
        raise ValueError(
            f"model.num_layers={num_layers} but model.layers={chosen} names {len(chosen)}: set model.layers=null "
            f"to keep the first {num_layers}, or model.num_layers={len(chosen)} (or null) to keep those"
        )


def _cut_config(config, count: int):
    """``config`` cut to its first ``count`` layers (the weights beyond are then not loaded)."""
    config.num_hidden_layers = count
    # Decoder configs (Qwen2, ...) carry one entry per layer; it must shrink with the layer count.
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:count]
    return config


def _keep_only(model: nn.Module, layers: list[int]) -> nn.Module:
    """``model`` (holding layers ``0..max(layers)``) reduced to ``layers``, renumbered ``0..len(layers) - 1``."""
    if layers == list(range(len(layers))):
        return model
    stack = encoder_layers(model)
    parent_name, _, attribute = next(n for n, m in model.named_modules() if m is stack).rpartition(".")
    kept = nn.ModuleList([stack[i] for i in layers])
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # the key/value cache and per-layer attention types index by it
                module.layer_idx = index
    setattr(model.get_submodule(parent_name), attribute, kept)
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in layers]
    config.num_hidden_layers = len(layers)
    return model


def load_encoder(
    model_name_or_path: str | None,
    num_layers: int | None = None,
    revision: str | None = None,
    encoder_config: Mapping | None = None,
    attn_implementation: str | None = None,
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """``AutoModel`` keeping only some of its layers (a small student initialised from a bigger model): ``layers``
    names them (``[0, 2, 5]``: the 1st, 3rd and 6th, in that order), else the first ``num_layers`` are kept.

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
        kept = chosen_layers(num_layers, layers, config.num_hidden_layers, "model.encoder_config")
        if kept is not None:
            config = _cut_config(config, len(kept))
        config.use_cache = False
        return AutoModel.from_config(config, **attention)
    if model_name_or_path is None:
        raise ValueError(
            "model.model_name_or_path is null and no model.encoder_config is given: set one of them"
        )
    check_model_path(model_name_or_path)
    config = AutoConfig.from_pretrained(model_name_or_path, revision=revision)
    config.use_cache = False
    kept = chosen_layers(num_layers, layers, config.num_hidden_layers, model_name_or_path)
    if kept is None:
        return AutoModel.from_pretrained(model_name_or_path, config=config, revision=revision, **attention)
    config = _cut_config(config, max(kept) + 1)
    # Layers beyond the last kept one are simply not loaded: silence transformers' report of them as unused weights.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(model_name_or_path, config=config, revision=revision, **attention)
    finally:
        hf_logging.set_verbosity(verbosity)
    return _keep_only(model, kept)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers, whatever the architecture calls it."""
    count = encoder.config.num_hidden_layers
    for _, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} transformer layers of {type(encoder).__name__}")


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


def weights_digest(module: nn.Module, digest_size: int = 8) -> str:
    """blake2b of every tensor of ``module.state_dict()`` (names and bytes, in name order): equal digests, equal
    weights. The stage-1 feature cache names its folder with it; evaluation shares pooled states by it."""
    digest = hashlib.blake2b(digest_size=digest_size)
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Encoding many texts.
def encode_sorted(
    encode: Callable[[list[str]], Tensor], texts: Sequence[str], chunk_size: int, dim: int, progress=None
) -> Tensor:
    """``encode`` over ``texts`` sorted longest first, ``chunk_size`` texts per call; ``(N, dim)`` float32 on the
    CPU, rows in the order of ``texts``. Each call's texts are of similar length (little padding) and memory peaks
    on the first. ``progress``: anything with ``update(n)`` (a tqdm bar), told the texts done after each call.

    >>> encode_sorted(lambda chunk: torch.tensor([[float(len(t))] for t in chunk]), ["a", "ccc", "bb"], 2, 1)
    tensor([[1.],
            [3.],
            [2.]])
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    chunks = []
    for start in range(0, len(order), chunk_size):
        chunk = [texts[i] for i in order[start : start + chunk_size]]
        chunks.append(encode(chunk).float().cpu())
        if progress is not None:
            progress.update(len(chunk))
    if not chunks:
        return torch.empty(0, dim)
    return torch.cat(chunks)[torch.argsort(torch.tensor(order, dtype=torch.long))]


def encode_all(encoder, texts: Sequence[str], batch_size: int, progress=None) -> Tensor:
    """:func:`encode_sorted` for an encoder object (``encode(texts, batch_size)`` and ``dim``: a teacher, the stage-1
    pooled features), ``CHUNK_BATCHES`` of its batches per call."""
    return encode_sorted(
        lambda chunk: encoder.encode(chunk, batch_size),
        texts,
        batch_size * CHUNK_BATCHES,
        encoder.dim,
        progress,
    )


def check_finite(vectors: Tensor, source: str) -> None:
    """Raise, naming ``source`` and the first bad rows, when any row holds NaN or inf."""
    bad = ~torch.isfinite(vectors).all(dim=-1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{int(bad.sum())} vector(s) from {source} contain NaN/inf (first rows: {rows}); "
            "check the teacher's dtype (fp16 overflow: try dtype=bfloat16 or float32) and the input texts"
        )
