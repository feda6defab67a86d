"""Noise, timesteps, targets and losses against their definitions."""

import math

import pytest
import torch

from tunelab.models.tiny import SD_SCHEDULE
from tunelab.train.config import LossConfig
from tunelab.train.losses import diffusion_loss, huber_c, min_snr_weights
from tunelab.train.noise import noise_batch, snr, training_scheduler
from diffusers import EulerDiscreteScheduler


def scheduler(**loss):
    return training_scheduler(EulerDiscreteScheduler(**SD_SCHEDULE), LossConfig(**loss))


def test_noise_depends_only_on_seed_step_and_global_position():
    s = scheduler()
    latents = torch.randn(4, 4, 8, 8)
    whole = noise_batch(latents, s, LossConfig(), seed=3, step=7, first_index=0)
    halves = [noise_batch(latents[i:i + 2], s, LossConfig(), seed=3, step=7, first_index=i) for i in (0, 2)]
    assert torch.equal(whole.noisy_latents, torch.cat([h.noisy_latents for h in halves]))
    assert torch.equal(whole.timesteps, torch.cat([h.timesteps for h in halves]))
    other_step = noise_batch(latents, s, LossConfig(), seed=3, step=8, first_index=0)
    assert not torch.equal(whole.noisy_latents, other_step.noisy_latents)


def test_timestep_sampling_ranges():
    s = scheduler()
    latents = torch.zeros(256, 1, 1, 1)
    uniform = noise_batch(latents, s, LossConfig(), seed=0, step=0, first_index=0).timesteps
    assert uniform.min() >= 0 and uniform.max() <= 999 and uniform.float().std() > 200
    ranged = noise_batch(latents, s, LossConfig(timestep_sampling="range", min_timestep=200, max_timestep=300),
                         seed=0, step=0, first_index=0).timesteps
    assert ranged.min() >= 200 and ranged.max() < 300
    logit = noise_batch(latents, s, LossConfig(timestep_sampling="logit_normal", logit_std=0.5),
                        seed=0, step=0, first_index=0).timesteps.float()
    assert abs(logit.mean() - 500) < 60 and logit.std() < uniform.float().std()


def test_epsilon_and_v_targets_and_noise_offset():
    latents = torch.randn(3, 4, 8, 8)
    eps = noise_batch(latents, scheduler(), LossConfig(), seed=1, step=0, first_index=0)
    a = scheduler().alphas_cumprod[eps.timesteps].view(-1, 1, 1, 1)
    noise = eps.target
    assert torch.allclose(eps.noisy_latents, a.sqrt() * latents + (1 - a).sqrt() * noise, atol=1e-5)
    v = noise_batch(latents, scheduler(prediction_type="v_prediction"), LossConfig(), seed=1, step=0, first_index=0)
    assert torch.allclose(v.target, a.sqrt() * noise - (1 - a).sqrt() * latents, atol=1e-5)
    offset = noise_batch(latents, scheduler(), LossConfig(noise_offset=0.5), seed=1, step=0, first_index=0)
    shift = (offset.noisy_latents - eps.noisy_latents) / (1 - a).sqrt()
    per_channel = shift.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(shift, per_channel.expand_as(shift), atol=1e-4)  # a constant per (sample, channel)
    assert per_channel.abs().mean() > 0.1


def test_zero_terminal_snr():
    plain, zero = scheduler(), scheduler(zero_terminal_snr=True)
    assert plain.alphas_cumprod[-1] > 0.004 and zero.alphas_cumprod[-1] == 0
    assert snr(zero, torch.tensor([999])).item() == 0


def test_huber_schedules_and_losses():
    s = scheduler()
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(huber_c(LossConfig(huber_c=0.1, huber_schedule="constant"), t, s.alphas_cumprod, 1000),
                          torch.full((3,), 0.1))
    exp = huber_c(LossConfig(huber_c=0.1, huber_schedule="exponential"), t, s.alphas_cumprod, 1000)
    assert exp[0] == pytest.approx(1.0) and exp[2] == pytest.approx(0.1 ** (999 / 1000), rel=1e-5)
    by_snr = huber_c(LossConfig(huber_c=0.1, huber_schedule="snr"), t, s.alphas_cumprod, 1000)
    assert by_snr[0] > by_snr[1] > by_snr[2] >= 0.1
    pred, target = torch.zeros(2, 1, 1, 1), torch.tensor([0.05, 3.0]).view(2, 1, 1, 1)
    t2 = torch.tensor([10, 10])
    l2 = diffusion_loss(pred, target, t2, s, LossConfig(type="l2"))
    assert l2.item() == pytest.approx((0.05**2 + 9) / 2)
    c = 0.1
    huber = diffusion_loss(pred, target, t2, s, LossConfig(type="huber", huber_c=c, huber_schedule="constant"))
    expected = [2 * c * (math.sqrt(d * d + c * c) - c) for d in (0.05, 3.0)]
    assert huber.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    smooth = diffusion_loss(pred, target, t2, s, LossConfig(type="smooth_l1", huber_c=c, huber_schedule="constant"))
    assert smooth.item() == pytest.approx(sum(e / c for e in expected) / 2, rel=1e-5)
    # Huber is quadratic for small errors, linear for large ones
    assert expected[0] == pytest.approx(0.05**2, rel=0.1) and expected[1] == pytest.approx(2 * c * 3.0, rel=0.05)


def test_min_snr_gamma_weights():
    s, sv = scheduler(), scheduler(prediction_type="v_prediction")
    t = torch.tensor([5, 300, 900])
    r = snr(s, t)
    w = min_snr_weights(s, t, 5.0)
    assert torch.allclose(w, torch.minimum(r, torch.tensor(5.0)) / r)
    assert w[0] < 1 and w[2] == pytest.approx(1.0)  # low noise (high SNR) is down-weighted
    assert torch.allclose(min_snr_weights(sv, t, 5.0), torch.minimum(r, torch.tensor(5.0)) / (r + 1))
    pred, target = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    weighted = diffusion_loss(pred, target, t, s, LossConfig(min_snr_gamma=5.0))
    assert weighted.item() == pytest.approx(w.mean().item(), rel=1e-6)
