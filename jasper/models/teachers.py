"""Teachers: frozen embedding models whose normalised, concatenated vectors the student learns to reproduce.

Jasper's teachers are NV-Embed-v2 (4096-d) and stella_en_1.5B_v5 (8192-d head): each teacher's vectors are
L2-normalised, concatenated (12288-d) and normalised again. The dimension is read off the teachers, never typed.

A teacher is a description (name, path, revision, prompts, role, pooling, max length, layers, dtype, dim) until it
is asked to encode: its model loads on the first ``encode``. Everything the TeacherCache keys on is read from the
model's small files (``jasper.models.model_files``), so a run whose vectors are all cached never loads a teacher: with
NV-Embed-v2 (7B) and stella (1.5B) that is minutes and tens of GB per rank saved on every stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoTokenizer

from jasper.models.encoders import load_encoder, mean_pool
from jasper.models.model_files import (
    config_value,
    sentence_transformer_dim,
    sentence_transformer_layers,
    sentence_transformer_max_length,
)
from jasper.models.teacher_base import ROLES, LazyTeacher, Teacher

__all__ = [
    "ROLES",
    "HuggingFaceTeacher",
    "LazyTeacher",
    "RemoteCodeTeacher",
    "SentenceTransformerTeacher",
    "Teacher",
]
POOLINGS = ("mean", "cls", "last")


class SentenceTransformerTeacher(LazyTeacher):
    """Any sentence-transformers model (its own pooling, dense and normalisation modules).

    ``max_length`` unset: the truncation length the model's ``sentence_bert_config.json`` gives (as
    sentence-transformers would apply it), read without loading.

    ``dense_folder``: the model's Dense module is loaded from this folder of the model instead of the one its
    ``modules.json`` names. stella_en_1.5B_v5 keeps one Dense head per output size beside each other
    (``2_Dense_256`` ... ``2_Dense_8192``, its card's "2_Dense_{dims}" folders) and its ``modules.json`` names
    ``2_Dense_1024``; another size otherwise means editing ``modules.json`` in a local copy, which a hub id cannot
    have. Works for a hub id (the folder is fetched like any module) and for a local folder.
    """

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None = None,
        prompt: str = "",
        max_length: int | None = None,
        revision: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | None = None,
        dim: int | None = None,
        prompts: Mapping[str, str] | None = None,
        role: str = "document",
        dense_folder: str | None = None,
    ) -> None:
        super().__init__(model_name_or_path, name, prompt, revision, device, dtype, dim, prompts, role)
        self.configured_max_length = max_length
        self.trust_remote_code = trust_remote_code
        self.dense_folder = dense_folder

    @cached_property
    def max_length(self) -> int | None:
        return self.configured_max_length or sentence_transformer_max_length(self.folder)

    @cached_property
    def num_layers(self) -> int | None:
        return sentence_transformer_layers(self.folder)

    def described_dim(self) -> int | None:
        return sentence_transformer_dim(self.folder, self.dense_folder)

    def dim_source(self) -> str:
        return f" (its Dense head from dense_folder: {self.dense_folder})" if self.dense_folder else ""

    def load(self):
        from sentence_transformers import SentenceTransformer  # heavy; only a teacher that encodes needs it

        model_kwargs = {"dtype": getattr(torch, self.dtype)} if self.dtype else None
        model = SentenceTransformer(
            self.model_name_or_path,
            device=self.device,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            model_kwargs=model_kwargs,
        )
        if self.dense_folder:
            self._select_dense(model)
        if self.max_length is not None:
            model.max_seq_length = self.max_length
        return model.eval()

    def _select_dense(self, model) -> None:
        """Replace the model's one Dense module by the one in ``dense_folder`` (same device and dtype)."""
        from sentence_transformers.models import Dense  # heavy; only a teacher that encodes needs it

        names = [name for name, module in model.named_children() if isinstance(module, Dense)]
        if len(names) != 1:
            raise ValueError(
                f"teacher {self.name}: dense_folder: {self.dense_folder} replaces the model's Dense module, but "
                f"{self.model_name_or_path} has {len(names)}; remove dense_folder from its teachers config"
            )
        local = Path(self.model_name_or_path).expanduser()
        if local.is_dir() and not (local / self.dense_folder).is_dir():
            heads = sorted(p.name for p in local.iterdir() if p.is_dir() and (p / "config.json").is_file())
            raise FileNotFoundError(
                f"teacher {self.name}: dense_folder: {self.dense_folder} is not a folder of {local} (its module "
                f"folders: {heads}); fix dense_folder in its teachers config"
            )
        old = model._modules[names[0]]
        dense = Dense.load(
            self.model_name_or_path,
            subfolder=self.dense_folder,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
        )
        parameter = next(old.parameters())
        model._modules[names[0]] = dense.to(device=parameter.device, dtype=parameter.dtype)

    def loaded_dim(self, model) -> int:
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(dimension())

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            prompt=self.prompt,  # the role's prompt exactly: "" is none (no default_prompt_name stands in)
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return F.normalize(vectors.float().cpu(), dim=-1)


class HuggingFaceTeacher(LazyTeacher):
    """A plain ``AutoModel`` with its own pooling (mean / cls / last token), prompt and max length.

    ``num_layers`` keeps the first N layers, or ``layers`` those it names, as the student's ``model.num_layers`` and
    ``model.layers`` do, so the student's own initialisation can be one of its teachers (unset: every layer).
    """

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None = None,
        pooling: str = "mean",
        prompt: str = "",
        max_length: int = 512,
        num_layers: int | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        dim: int | None = None,
        prompts: Mapping[str, str] | None = None,
        role: str = "document",
        layers: Sequence[int] | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"teacher pooling={pooling!r} is not one of {POOLINGS}")
        super().__init__(model_name_or_path, name, prompt, revision, device, dtype, dim, prompts, role)
        self.pooling = pooling
        self.max_length = max_length  # the tokenizer truncates here: the truncation length is this, exactly
        self.configured_layers = num_layers
        self.layer_choice = None if layers is None else [int(i) for i in layers]

    @cached_property
    def num_layers(self) -> int | list[int] | None:
        """What its cache records: the layer count, or the chosen layers' indices."""
        return self.layer_choice or self.configured_layers or config_value(self.folder, "num_hidden_layers")

    def described_dim(self) -> int | None:
        return config_value(self.folder, "hidden_size")

    @cached_property
    def tokenizer(self):
        tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, revision=self.revision)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load(self):
        model = load_encoder(
            self.model_name_or_path, self.configured_layers, self.revision, layers=self.layer_choice
        ).to(self.device)
        if self.dtype:
            model.to(getattr(torch, self.dtype))
        return model.eval()

    def loaded_dim(self, model) -> int:
        return int(model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                [self.prompt + t for t in texts[start : start + batch_size]],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            chunks.append(F.normalize(self._pool(hidden, batch["attention_mask"]).float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)

    def _pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "mean":
            return mean_pool(hidden, mask)
        if self.pooling == "cls":
            return hidden[:, 0]
        last = mask.sum(dim=1) - 1  # right padding: the last real token of each row
        return hidden[torch.arange(len(hidden), device=hidden.device), last]


class RemoteCodeTeacher(LazyTeacher):
    """A custom-code model that encodes with its own ``encode(texts, instruction=..., max_length=...)``: NV-Embed-v2
    (and v1), loaded as its card's "Usage (HuggingFace Transformers)" does, ``AutoModel`` with ``trust_remote_code``.

    The role's prompt goes in as ``instruction``, so the model's own code treats the text as its card says: the
    instruction before the text, the EOS token after every input (``add_eos``), padding on the side its config names
    (``padding_side: right``), and, with ``is_mask_instruction``, the instruction's tokens left out of the pooling.
    Its vectors are L2-normalised here, as the card does. ``dim`` belongs in the config (the pooling is custom code);
    it is checked on the loaded model by encoding one text.
    """

    pooling = "model.encode"

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None = None,
        prompt: str = "",
        max_length: int = 512,
        revision: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | None = None,
        dim: int | None = None,
        prompts: Mapping[str, str] | None = None,
        role: str = "document",
    ) -> None:
        super().__init__(model_name_or_path, name, prompt, revision, device, dtype, dim, prompts, role)
        self.max_length = max_length
        self.trust_remote_code = trust_remote_code

    @cached_property
    def num_layers(self) -> int | None:
        return config_value(self.folder, "num_hidden_layers")

    def described_dim(self) -> int | None:
        return None  # the output is the custom code's: the config's dim, checked when the model loads

    def load(self):
        model = AutoModel.from_pretrained(
            self.model_name_or_path,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            dtype=getattr(torch, self.dtype) if self.dtype else None,
        )
        return model.to(self.device).eval()

    def loaded_dim(self, model) -> int:
        with torch.inference_mode():
            return int(model.encode(["a"], instruction="", max_length=8).shape[-1])

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            vectors = self.model.encode(batch, instruction=self.prompt, max_length=self.max_length)
            chunks.append(F.normalize(vectors.float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)
