"""Noising for training: timesteps, noise (with offset), the noisy latents and the prediction target.

Every sample's noise and timestep come from its own generator seeded by (run seed, step, position in the global
batch). So they do not depend on how the global batch is split across processes, nor on anything that happened
before this step — a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler

from tunelab.train.config import LossConfig


def training_scheduler(model_scheduler, config: LossConfig) -> DDPMScheduler:
    """The forward (noising) process of the model's own schedule, optionally rescaled to zero terminal SNR."""
    prediction_type = config.prediction_type or model_scheduler.config.get("prediction_type", "epsilon")
    keep = {k: v for k, v in model_scheduler.config.items()
            if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")}
    return DDPMScheduler(**keep, prediction_type=prediction_type, rescale_betas_zero_snr=config.zero_terminal_snr)


def sample_seed(seed: int, step: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample `index` of the global batch at optimizer step `step`."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def sample_timestep(generator: torch.Generator, config: LossConfig, num_train_timesteps: int) -> int:
    low, high = config.min_timestep, min(config.max_timestep, num_train_timesteps)
    if config.timestep_sampling == "logit_normal":  # SD3-style: more weight on the middle of the schedule
        u = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(1, generator=generator))
        return min(low + int(u.item() * (high - low)), high - 1)
    # "uniform" over the whole schedule and "range" over [min_timestep, max_timestep) are the same draw
    return int(torch.randint(low, high, (1,), generator=generator).item())


@dataclass
class NoisedBatch:
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor  # long [B]
    target: torch.Tensor


def noise_batch(latents: torch.Tensor, scheduler: DDPMScheduler, config: LossConfig, *, seed: int, step: int,
                first_index: int) -> NoisedBatch:
    """Noise `latents` (already scaled); sample i of this process is sample `first_index + i` of the global batch."""
    noises, steps = [], []
    for i in range(latents.shape[0]):
        g = torch.Generator().manual_seed(sample_seed(seed, step, first_index + i))
        steps.append(sample_timestep(g, config, scheduler.config.num_train_timesteps))
        noise = torch.randn(latents.shape[1:], generator=g)
        if config.noise_offset:  # per-channel constant shift: lets the model learn very dark / bright images
            noise = noise + config.noise_offset * torch.randn(latents.shape[1], 1, 1, generator=g)
        noises.append(noise)
    noise = torch.stack(noises).to(latents.device, latents.dtype)
    timesteps = torch.tensor(steps, device=latents.device, dtype=torch.long)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return NoisedBatch(noisy, timesteps, target)


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ/(1-ᾱ) per timestep (0 at the last step under zero terminal SNR)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-12)
