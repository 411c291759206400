"""The NV-Embed-v2 stand-in's configuration (the real repository's class names and keys): a Mistral text model,
the latent-attention pooling, and how inputs are prepared (``add_eos``, ``padding_side``, ``is_mask_instruction``)."""

from transformers import MistralConfig, PretrainedConfig


class LatentAttentionConfig(PretrainedConfig):
    """The pooling: ``num_latents_value`` latents of ``latent_dim``, ``num_cross_heads`` x ``cross_dim_head`` inner
    width, output ``hidden_dim`` (4096, the real model's). ``input_dim`` is the stand-in's own: the width of its tiny
    text model, projected up to ``hidden_dim`` (the real text model is 4096 wide already)."""

    model_type = "latent_attention"

    def __init__(
        self,
        num_latents_value: int = 8,
        num_cross_heads: int = 2,
        cross_dim_head: int = 8,
        hidden_dim: int = 4096,
        latent_dim: int = 4096,
        input_dim: int = 32,
        output_normalize: bool = True,
        **kwargs,
    ):
        self.num_latents_value = num_latents_value
        self.num_cross_heads = num_cross_heads
        self.cross_dim_head = cross_dim_head
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        self.input_dim = input_dim
        self.output_normalize = output_normalize
        super().__init__(**kwargs)


class NVEmbedConfig(PretrainedConfig):
    model_type = "nvembed"
    is_composition = False

    def __init__(
        self,
        latent_attention_config=None,
        text_config=None,
        padding_side: str = "right",
        add_pad_token: bool = True,
        is_mask_instruction: bool = True,
        add_eos: bool = True,
        mask_type: str = "b",
        **kwargs,
    ):
        if isinstance(latent_attention_config, dict):
            latent_attention_config = LatentAttentionConfig(**latent_attention_config)
        self.latent_attention_config = latent_attention_config or LatentAttentionConfig()
        if isinstance(text_config, dict):
            text_config = MistralConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        self.text_config = text_config
        self.padding_side = padding_side
        self.add_pad_token = add_pad_token
        self.is_mask_instruction = is_mask_instruction
        self.add_eos = add_eos
        self.mask_type = mask_type
        super().__init__(**kwargs)
