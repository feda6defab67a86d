"""Training losses: L2, L1, (pseudo-)Huber and smooth-L1 with a constant / exponential / SNR-scheduled Huber c, and
min-SNR-γ weighting. Per-sample losses (mean over C,H,W) are weighted, then averaged over the batch.

Huber and its schedules follow sd-scripts' definitions (`--loss_type`, `--huber_c`, `--huber_schedule`), so a
user's numbers carry over."""

from __future__ import annotations

import math

import torch

from tunelab.train.config import LossConfig
from tunelab.train.noise import snr


def huber_c(config: LossConfig, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, num_train_timesteps: int):
    """Per-sample Huber c: constant; exponential decay from 1 at t=0 to huber_c at t=T; or by noise level."""
    if config.huber_schedule == "constant":
        return torch.full(timesteps.shape, config.huber_c, device=timesteps.device)
    if config.huber_schedule == "exponential":
        alpha = -math.log(config.huber_c) / num_train_timesteps
        return torch.exp(-alpha * timesteps.float())
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    sigmas = ((1.0 - a) / a.clamp(min=1e-12)) ** 0.5
    return (1.0 - config.huber_c) / (1.0 + sigmas) ** 2 + config.huber_c


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, config: LossConfig, c: torch.Tensor | None):
    diff = prediction.float() - target.float()
    if config.type == "l2":
        return diff**2
    if config.type == "l1":
        return diff.abs()
    c = c.view(-1, *([1] * (diff.ndim - 1)))
    pseudo_huber = torch.sqrt(diff**2 + c**2) - c
    return 2 * c * pseudo_huber if config.type == "huber" else 2 * pseudo_huber


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR+1) for v-prediction (Hang et al. 2023)."""
    s = snr(scheduler, timesteps)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (s + 1)
    return clipped / s.clamp(min=1e-8)  # zero terminal SNR: s=0 → weight 0 (the target is the input itself)


def diffusion_loss(prediction, target, timesteps, scheduler, config: LossConfig,
                   sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of the per-sample losses, each times its `sample_weights` entry when given (prior preservation)."""
    c = None
    if config.type in ("huber", "smooth_l1"):
        c = huber_c(config, timesteps, scheduler.alphas_cumprod, scheduler.config.num_train_timesteps)
    per_sample = elementwise_loss(prediction, target, config, c).mean(dim=tuple(range(1, prediction.ndim)))
    if config.min_snr_gamma:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, config.min_snr_gamma)
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
