"""Tiny SDXL / SD1.5 models: the same diffusers/transformers classes as the real ones, with small configs.

Tests and the toy world use these. Layout features that matter for conversion are kept: SDXL has
`addition_embed_type="text_time"`, two CLIP text encoders (the second with a projection), linear attention
projections; SD1.5 has one CLIP text encoder and conv projections. Both use the real CLIP BPE tokenizer."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tunelab.models.components import ModelComponents
from tunelab.models.tokenizers import VOCAB_SIZE, clip_tokenizer

# SD's noise schedule (both SD1.5 and SDXL), as in their scheduler configs.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def tiny_text_encoder(hidden: int, layers: int, heads: int, projection_dim: int | None, act: str) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim or hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    model = CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
    return model.eval()


def tiny_vae(block_out_channels=(32, 64, 64), latent_channels: int = 4, scaling_factor: float = 1.0) -> AutoencoderKL:
    """len(block_out_channels) = 3 → downsampling factor 4 (32×32 images → 8×8 latents)."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=32,
        scaling_factor=scaling_factor,
    ).eval()


def tiny_sdxl(
    seed: int = 0,
    block_out_channels=(32, 64, 128),
    layers_per_block: int = 2,
    transformer_layers_per_block=(1, 1, 1),
    te_widths=(32, 64),
    te_layers: int = 3,
    vae_channels=(32, 64, 64),
    sample_size: int = 8,
) -> ModelComponents:
    """A tiny SDXL-architecture model (UNet ~5.5M params at the defaults). Deterministic given `seed`."""
    torch.manual_seed(seed)
    te1_width, te2_width = te_widths
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        transformer_layers_per_block=tuple(transformer_layers_per_block),
        attention_head_dim=(2, 4, 8),  # SDXL semantics: number of heads per level
        cross_attention_dim=te1_width + te2_width,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=te2_width + 6 * time_dim,
        norm_num_groups=16,
    ).eval()
    te1 = tiny_text_encoder(te1_width, te_layers, 4, None, "quick_gelu")
    te2 = tiny_text_encoder(te2_width, te_layers, 4, te2_width, "gelu")
    return ModelComponents(
        architecture="sdxl",
        unet=unet,
        vae=tiny_vae(vae_channels),
        text_encoders=[te1, te2],
        tokenizers=[clip_tokenizer(), clip_tokenizer(pad_token="!")],
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading", steps_offset=1),
        source="tiny_sdxl",
    )


def tiny_sd15(
    seed: int = 0,
    block_out_channels=(32, 64, 64),
    layers_per_block: int = 2,
    te_width: int = 32,
    te_layers: int = 3,
    vae_channels=(32, 64, 64),
    sample_size: int = 8,
) -> ModelComponents:
    """A tiny SD1.5-architecture model. Deterministic given `seed`."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        attention_head_dim=8,
        cross_attention_dim=te_width,
        norm_num_groups=16,
    ).eval()
    return ModelComponents(
        architecture="sd15",
        unet=unet,
        vae=tiny_vae(vae_channels),
        text_encoders=[tiny_text_encoder(te_width, te_layers, 4, None, "quick_gelu")],
        tokenizers=[clip_tokenizer()],
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading", steps_offset=1),
        source="tiny_sd15",
    )
