"""One micro-batch → the diffusion training loss: conditioning, noising, UNet prediction, loss.

Kept apart from the loop so the benchmark's bare step and the validation stage can call exactly the same math."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tunelab.models.components import ModelComponents
from tunelab.models.text_conditioning import encode_prompts, sdxl_time_ids
from tunelab.train.config import RunConfig
from tunelab.train.losses import diffusion_loss
from tunelab.train.noise import noise_batch


class EncoderView:
    """A text encoder as `encode_prompts` sees it: calls go through the (possibly DDP-wrapped) module, so gradient
    synchronisation happens; attributes (`device`, `text_model`, ...) come from the plain module."""

    def __init__(self, wrapped: torch.nn.Module, plain: torch.nn.Module):
        self._wrapped, self._plain = wrapped, plain

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._plain, name)


@dataclass
class Conditioning:
    prompt_embeds: torch.Tensor
    added_cond_kwargs: dict | None  # SDXL: {"text_embeds": pooled, "time_ids": [B, 6]}


def scaled_latents(components: ModelComponents, batch: dict) -> torch.Tensor:
    """Batch latents (unscaled, as cached) or pixels encoded now, times the VAE's scaling factor."""
    vae = components.vae
    if "latents" in batch:
        latents = batch["latents"]
    else:  # no latent cache: encode with the frozen VAE (distribution mean, as the cache does)
        vae_weight = next(vae.parameters())
        with torch.no_grad():
            latents = vae.encode(batch["pixel_values"].to(vae_weight.device, vae_weight.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    weight = next(components.unet.parameters())  # diffusers' .device/.dtype walk every parameter: ms per call
    return (latents.to(weight.device, weight.dtype) - shift) * vae.config.scaling_factor


def conditioning(components: ModelComponents, batch: dict, config: RunConfig, latents: torch.Tensor,
                 *, train_text_encoders: bool) -> Conditioning:
    """Text embeddings (from the batch's cache when the text encoders are frozen, else encoded here — inside the
    autograd graph when they train) and SDXL's pooled embedding + size/crop time ids."""
    if "prompt_embeds" in batch and not train_text_encoders:
        prompt_embeds = batch["prompt_embeds"].to(latents.device, latents.dtype)
        pooled = batch.get("pooled_prompt_embeds")
        pooled = None if pooled is None else pooled.to(latents.device, latents.dtype)
    else:
        with torch.set_grad_enabled(train_text_encoders and torch.is_grad_enabled()):
            embeddings = encode_prompts(components, batch["captions"], clip_skip=config.train.clip_skip,
                                        max_chunks=config.train.max_chunks,
                                        empty_as_zeros=config.train.empty_caption_as_zeros)
        prompt_embeds, pooled = embeddings.prompt_embeds, embeddings.pooled_prompt_embeds
    if not components.is_sdxl:
        return Conditioning(prompt_embeds, None)
    time_ids = sdxl_time_ids(*size_conditioning(components, batch, latents)).to(latents.device, latents.dtype)
    return Conditioning(prompt_embeds, {"text_embeds": pooled, "time_ids": time_ids})


def size_conditioning(components: ModelComponents, batch: dict, latents: torch.Tensor):
    """(original_size, crop_top_left, target_size) from the batch, or 'uncropped, at the latent's pixel size'."""
    if "original_size" in batch:
        return batch["original_size"], batch["crop_top_left"], batch["target_size"]
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    size = torch.tensor([[latents.shape[2] * factor, latents.shape[3] * factor]] * latents.shape[0])
    return size, torch.zeros_like(size), size


def training_loss(components: ModelComponents, unet: torch.nn.Module, batch: dict, config: RunConfig,
                  noise_scheduler, *, seed: int, micro_step: int, first_index: int,
                  train_text_encoders: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, timesteps). `unet` may be the DDP-wrapped module; `components` holds the plain (or viewed) parts."""
    latents = scaled_latents(components, batch)
    cond = conditioning(components, batch, config, latents, train_text_encoders=train_text_encoders)
    noised = noise_batch(latents, noise_scheduler, config.loss, seed=seed, step=micro_step, first_index=first_index)
    prediction = unet(noised.noisy_latents, noised.timesteps, encoder_hidden_states=cond.prompt_embeds,
                      added_cond_kwargs=cond.added_cond_kwargs).sample
    loss = diffusion_loss(prediction, noised.target, noised.timesteps, noise_scheduler, config.loss,
                          sample_weights=prior_weights(batch, config.train.prior_loss_weight))
    return loss, noised.timesteps


def prior_weights(batch: dict, prior_loss_weight: float) -> torch.Tensor | None:
    """Per-sample loss weights: `prior_loss_weight` for regularisation images (is_reg sources), 1 for the rest
    (sd-scripts' --prior_loss_weight, here for full finetunes too)."""
    if "is_reg" not in batch or prior_loss_weight == 1.0:
        return None
    is_reg = torch.as_tensor(batch["is_reg"], dtype=torch.bool)
    return torch.where(is_reg, torch.tensor(prior_loss_weight), torch.tensor(1.0))


def components_view(components: ModelComponents, wrapped_encoders: list[torch.nn.Module]) -> ModelComponents:
    """The components with each text encoder called through its wrapper (see EncoderView)."""
    views = [EncoderView(w, p) for w, p in zip(wrapped_encoders, components.text_encoders)]
    return replace(components, text_encoders=views)
