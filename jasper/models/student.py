"""The student: a Hugging Face encoder, masked mean pooling, FC1 to the teacher dimension, and MRL heads.

Jasper's student is stella_en_1.5B_v5 (Qwen2) with FC1 -> 12288 and extra heads FC2-FC4 (1024/512/256). Any
``AutoModel`` encoder works here, BERT-style or decoder-style.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from jasper.models.encoders import (
    enable_gradient_checkpointing,
    encode_sorted,
    encoder_layers,
    load_encoder,
    mean_pool,
)

log = logging.getLogger(__name__)

FC1 = "fc1"
MRL_MODES = ("separate", "prefix")
STUDENT_KEYS = (
    "model_name_or_path",
    "fc1_dim",
    "mrl_dims",
    "mrl_mode",
    "num_layers",
    "layers",
    "max_length",
    "prompt",
    "encoder_config",
    "tokenizer",
)
"""What ``Student.describe`` records: the keyword arguments that rebuild a student (``student.pt`` and export)."""


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

    ``num_layers`` keeps the model's first N layers; ``layers`` picks them instead (``[0, 2, 5]``), and ``describe``
    records the choice, so a fresh init rebuilt from a checkpoint (the evaluation's init row) starts where it did.
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
        layers: Sequence[int] | None = None,
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
        self.layer_choice = None if layers is None else [int(i) for i in layers]
        self.encoder = load_encoder(
            model_name_or_path, num_layers, revision, self.encoder_config, attn_implementation, layers
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
        # MRL heads that some stage has trained: read with the weights (jasper.storage.checkpoints), extended by the
        # stage that trains them (DistillModule.on_train_start), saved with the weights; stage 3's head_init leaves
        # them as they are.
        self.heads_trained: set[str] = set()

    @property
    def head_names(self) -> list[str]:
        return [FC1] + [str(d) for d in self.mrl_dims]

    @property
    def encoder_frozen(self) -> bool:
        """No encoder parameter trains: the encoder runs without autograd (and the stage keeps it in eval mode)."""
        return not any(p.requires_grad for p in self.encoder.parameters())

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

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        head: str = FC1,
        batch_size: int = 64,
        show_progress: bool | None = None,
    ) -> Tensor:
        """Normalised vectors ``(N, d)`` (float32, CPU) of one head, in the order of ``texts`` (images:
        :class:`jasper.models.vision.MultimodalStudent`)."""
        if head not in self.head_names:
            raise KeyError(f"unknown head {head!r}; this student has {self.head_names}")
        return self.project_pooled(self.encode_pooled(texts, batch_size, show_progress), [head])[head]

    @torch.inference_mode()
    def encode_pooled(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None
    ) -> Tensor:
        """Mean-pooled states ``(N, H)`` (float32, CPU) in the order of ``texts``: every head is
        :meth:`project_pooled` of them, so scoring several heads encodes the texts once."""
        texts = list(texts)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device

        def encode_batch(batch_texts: list[str]) -> Tensor:
            batch = self.tokenize(batch_texts).to(device)
            return self.pooled(batch["input_ids"], batch["attention_mask"])

        show = len(texts) > 10 * batch_size if show_progress is None else show_progress
        with tqdm(total=len(texts), desc="encode", unit="text", disable=not show) as bar:
            pooled = encode_sorted(encode_batch, texts, batch_size, self.fc1.in_features, bar)
        self.train(was_training)
        return pooled

    @torch.inference_mode()
    def project_pooled(self, pooled: Tensor, heads: Sequence[str] | None = None) -> dict[str, Tensor]:
        """:meth:`project` of pooled states kept elsewhere (float32 on the CPU, as :meth:`encode_pooled` gives
        them), on the student's device and in its dtype; the vectors come back on the CPU."""
        weight = self.fc1.weight
        vectors = self.project(pooled.to(weight.device, weight.dtype), heads)
        return {name: v.cpu() for name, v in vectors.items()}

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
            **({"layers": self.layer_choice} if self.layer_choice is not None else {}),
            "max_length": self.max_length,
            "prompt": self.prompt,
            **({"encoder_config": self.encoder_config} if self.encoder_config is not None else {}),
            **({"tokenizer": self.tokenizer_path} if self.tokenizer_path is not None else {}),
        }


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
    wide = [d for d in mrl_dims if d > fc1_dim]
    if mrl_mode == "separate" and wide:
        log.warning(
            "model.mrl_dims has head(s) %s wider than FC1 (%d, the teachers' dimension): such a head adds no "
            "information the teachers hold, and stage 3 can start only its first %d rows from FC1 (the rest "
            "stay random); use dimensions <= %d",
            wide,
            fc1_dim,
            fc1_dim,
            fc1_dim,
        )
    if mrl_mode == "prefix":
        too_big = [d for d in mrl_dims if d > fc1_dim]
        if too_big:
            raise ValueError(
                f"model.mrl_mode=prefix truncates FC1's {fc1_dim}-d output, but model.mrl_dims has {too_big}: "
                f"use dimensions <= {fc1_dim}, or model.mrl_mode=separate for heads of any size"
            )
