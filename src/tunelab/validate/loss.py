"""The deterministic validation loss: every item gets fixed noise and one timestep in each band of the schedule.

Draws come from a generator seeded by (validation seed, item key) — never from the training RNG — so the same
checkpoint gives the same numbers in every run, and a resumed run measures exactly what an uninterrupted one would.
One timestep per band (instead of one fixed timestep for all) shows damage at high noise that a mean over t≈500
hides. The loss is the training loss's per-sample definition (type, Huber c, prediction type, zero terminal SNR),
without min-SNR weighting: that is an emphasis for training, and would make bands incomparable."""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict

import torch

from tunelab.models.components import ModelComponents
from tunelab.models.text_conditioning import chunk_token_ids
from tunelab.train.config import RunConfig
from tunelab.train.losses import elementwise_loss, huber_c
from tunelab.train.noise import training_scheduler
from tunelab.train.objective import Conditioning, conditioning, scaled_latents
from tunelab.validate.sets import ValidationItem


def item_generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def band_edges(bands: int, num_train_timesteps: int) -> list[tuple[int, int]]:
    """[low, high) timestep ranges splitting the whole schedule into `bands` nearly equal parts (low noise first)."""
    cuts = [round(k * num_train_timesteps / bands) for k in range(bands + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def item_draws(seed: int, key: str, latent_shape: torch.Size, bands: int,
               num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps long [bands], noise [bands, *latent_shape]): one uniform timestep inside each band, own noise each."""
    generator = item_generator(seed, key)
    timesteps, noises = [], []
    for low, high in band_edges(bands, num_train_timesteps):
        timesteps.append(low + int(torch.randint(high - low, (1,), generator=generator).item()))
        noises.append(torch.randn(latent_shape, generator=generator))
    return torch.tensor(timesteps, dtype=torch.long), torch.stack(noises)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module):
    """Modules in eval mode (no dropout); every submodule's previous train/eval flag is restored afterwards."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def per_sample_loss(prediction, target, timesteps, scheduler, run_config: RunConfig) -> torch.Tensor:
    """The training loss of each sample (mean over C, H, W), unweighted."""
    config = run_config.loss
    c = None
    if config.type in ("huber", "smooth_l1"):
        c = huber_c(config, timesteps, scheduler.alphas_cumprod, scheduler.config.num_train_timesteps)
    return elementwise_loss(prediction, target, config, c).mean(dim=tuple(range(1, prediction.ndim)))


def _batch_of(items: list[ValidationItem]) -> dict:
    """The batch contract (see the brief) for a list of validation items."""
    return {
        "latents": torch.stack([item.latents for item in items]),
        "captions": [item.caption for item in items],
        "original_size": torch.tensor([item.original_size for item in items]),
        "crop_top_left": torch.tensor([item.crop_top_left for item in items]),
        "target_size": torch.tensor([item.target_size for item in items]),
    }


def _groups(components: ModelComponents, items: list[ValidationItem], max_chunks: int) -> list[list[int]]:
    """Item indices grouped by latent shape and caption chunk count: an item is never padded by its neighbours, so its
    numbers do not depend on which other items are in the set."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        chunks = len(chunk_token_ids(components.tokenizers[0], item.caption, max_chunks))
        groups[(tuple(item.latents.shape), chunks)].append(i)
    return list(groups.values())


@torch.no_grad()
def band_losses(components: ModelComponents, items: list[ValidationItem], run_config: RunConfig, *, seed: int,
                bands: int, batch_size: int) -> torch.Tensor:
    """Loss of every (item, band) pair → float [len(items), bands]."""
    scheduler = training_scheduler(components.scheduler, run_config.loss)
    num_train_timesteps = scheduler.config.num_train_timesteps
    losses = torch.zeros(len(items), bands)
    with eval_mode(components.unet, *components.text_encoders):
        for group in _groups(components, items, run_config.train.max_chunks):
            latents, cond = _encode_group(components, [items[i] for i in group], run_config, batch_size)
            draws = [item_draws(seed, items[i].key, items[i].latents.shape, bands, num_train_timesteps) for i in group]
            timesteps = torch.stack([t for t, _ in draws]).flatten()  # pair p = (item p // bands, band p % bands)
            noise = torch.cat([n for _, n in draws])
            for start in range(0, len(timesteps), batch_size):
                pairs = torch.arange(start, min(start + batch_size, len(timesteps)))
                rows = pairs // bands
                t = timesteps[pairs].to(latents.device)
                x0, eps = latents[rows], noise[pairs].to(latents.device, latents.dtype)
                noisy = scheduler.add_noise(x0, eps, t)
                target = scheduler.get_velocity(x0, eps, t) if scheduler.config.prediction_type == "v_prediction" else eps
                added = None if cond.added_cond_kwargs is None else {k: v[rows] for k, v in cond.added_cond_kwargs.items()}
                prediction = components.unet(noisy, t, encoder_hidden_states=cond.prompt_embeds[rows],
                                             added_cond_kwargs=added).sample
                loss = per_sample_loss(prediction, target, t, scheduler, run_config).float().cpu()
                for pair, value in zip(pairs.tolist(), loss):
                    losses[group[pair // bands], pair % bands] = value
    return losses


def _encode_group(components, group_items: list[ValidationItem], run_config: RunConfig,
                  batch_size: int) -> tuple[torch.Tensor, Conditioning]:
    """Scaled latents and conditioning (prompt embeds, SDXL added kwargs) of a group, encoded `batch_size` at a time."""
    latents, embeds, added = [], [], []
    for start in range(0, len(group_items), batch_size):
        batch = _batch_of(group_items[start : start + batch_size])
        x0 = scaled_latents(components, batch)
        c = conditioning(components, batch, run_config, x0, train_text_encoders=False)
        latents.append(x0)
        embeds.append(c.prompt_embeds)
        added.append(c.added_cond_kwargs)
    merged = None if added[0] is None else {k: torch.cat([a[k] for a in added]) for k in added[0]}
    return torch.cat(latents), Conditioning(torch.cat(embeds), merged)
