"""The NV-Embed-v2 stand-in's model: ``NVEmbedModel`` with the real one's loading (``AutoModel``, trust_remote_code)
and interface: ``encode(prompts, instruction="", max_length=4096)`` puts the instruction before and the tokenizer's
EOS token after every input, pads on the right, leaves the instruction's tokens out of the pooling, and returns
``(N, 4096)`` vectors; ``forward`` returns ``{"sentence_embeddings": ...}``, pooled when given a ``pool_mask``."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, MistralModel, PreTrainedModel

from .configuration_nvembed import NVEmbedConfig


def input_transform_func(tokenizer, examples: dict, always_add_eos: bool, max_length: int, instruction: str):
    """The real model's input preparation: ``instruction + text + eos``, padded and truncated to ``max_length``."""
    if always_add_eos:
        examples["input_texts"] = [
            instruction + text + tokenizer.eos_token for text in examples["input_texts"]
        ]
    return tokenizer(
        examples["input_texts"],
        max_length=max_length,
        padding=True,
        return_token_type_ids=False,
        return_tensors="pt",
        truncation=True,
    )


class LatentAttention(nn.Module):
    """Each token attends to learned latents (cross-attention, residual), then a masked mean over the tokens:
    ``(B, L, input_dim) -> (B, L, hidden_dim)``, or ``(B, hidden_dim)`` given a mask."""

    def __init__(self, config) -> None:
        super().__init__()
        self.heads, inner = config.num_cross_heads, config.num_cross_heads * config.cross_dim_head
        self.up = nn.Linear(config.input_dim, config.hidden_dim)
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.to_q = nn.Linear(config.hidden_dim, inner, bias=False)
        self.to_kv = nn.Linear(config.latent_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, config.hidden_dim, bias=False)
        self.latents = nn.Parameter(torch.randn(config.num_latents_value, config.latent_dim))
        self.output_normalize = config.output_normalize

    def forward(self, hiddens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(hiddens)  # (B, L, D)
        b, length, _ = x.shape
        q = self.to_q(self.norm(x)).view(b, length, self.heads, -1).transpose(1, 2)  # (B, h, L, d)
        k, v = (
            t.view(1, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
            for t in self.to_kv(self.latents).chunk(2, -1)
        )
        out = F.scaled_dot_product_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
        x = x + self.to_out(out.transpose(1, 2).reshape(b, length, -1))
        if attention_mask is None:
            return x
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return F.normalize(pooled, dim=-1) if self.output_normalize else pooled


class NVEmbedModel(PreTrainedModel):
    config_class = NVEmbedConfig
    base_model_prefix = "embedding_model"

    def __init__(self, config: NVEmbedConfig):
        super().__init__(config)
        self.embedding_model = MistralModel(config.text_config)
        self.latent_attention_model = LatentAttention(config.latent_attention_config)
        # As the real model: the tokenizer comes with the model, from the repository it was loaded from.
        self.tokenizer = (
            AutoTokenizer.from_pretrained(config.name_or_path, trust_remote_code=True)
            if config.name_or_path
            else None
        )
        self.padding_side = config.padding_side
        self.is_mask_instruction = config.is_mask_instruction
        self.add_eos = config.add_eos
        if config.add_pad_token and self.tokenizer is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.tokenizer.padding_side = self.padding_side
        self.post_init()

    def prepare_kwargs_from_batch(
        self, batch_dict: dict, instruction_lens: int, device: torch.device
    ) -> dict:
        batch_dict = {k: v.to(device) for k, v in batch_dict.items()}
        pool_mask = batch_dict["attention_mask"].clone()
        if self.padding_side == "right" and self.is_mask_instruction and instruction_lens > 0:
            pool_mask[:, :instruction_lens] = 0  # the instruction is not pooled
        return {
            "input_ids": batch_dict["input_ids"].long(),
            "attention_mask": batch_dict["attention_mask"],
            "pool_mask": pool_mask,
        }

    def forward(self, input_ids, attention_mask, pool_mask=None, return_dict: bool = True):
        hidden = self.embedding_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embeds = self.latent_attention_model(hidden, pool_mask)
        return {"sentence_embeddings": embeds} if return_dict else (embeds,)

    @torch.no_grad()
    def encode(self, prompts: list[str], instruction: str = "", max_length: int = 4096, **kwargs):
        if self.padding_side == "right" and self.is_mask_instruction and len(instruction) > 0:
            instruction_lens = len(self.tokenizer.tokenize(instruction))
        else:
            instruction_lens = 0
        device = next(self.embedding_model.parameters()).device
        batch_dict = input_transform_func(
            self.tokenizer,
            {"input_texts": list(prompts)},
            always_add_eos=True,
            max_length=max_length,
            instruction=instruction,
        )
        features = self.prepare_kwargs_from_batch(batch_dict, instruction_lens, device=device)
        return self(**features)["sentence_embeddings"].squeeze(1)
