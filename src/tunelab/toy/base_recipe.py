"""`tunelab toy base`: pretrain the toy base model from scratch on the toy world.

Two stages, plain loops:
1. the VAE, on every colour, shape, character and style any world uses (so a finetune's new concept can be decoded);
2. UNet + both text encoders together, on the base world's latents, so the text space has structure and a tag the
   base world never uses ("zorb") stays an untrained token.

Measured on the design machine: batch 32, UNet lr 1e-3, text encoders lr 1e-4, 10 % captions dropped to the zero
embedding, LR decayed to 0.1× — a constant LR left the model at 60 % correct, the decay reached 98 %."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tunelab import atomic
from tunelab.config import StrictModel
from tunelab.models.components import ModelComponents
from tunelab.models.text_conditioning import encode_prompts, sdxl_time_ids
from tunelab.models.tiny import tiny_sdxl
from tunelab.models.tokenizers import EOS, write_tokenizer_files
from tunelab.toy.concepts import CHARACTERS, COLOURS, SHAPES, UNKNOWN_TAG
from tunelab.toy.world import ToyItem, generate

IMAGE_SIZE = 32
# Tags a base caption never loses to tag dropout: what the image shows. Location, artist and quality tags may go.
SUBJECT_TAGS = frozenset([*COLOURS, *SHAPES, "car", *CHARACTERS, UNKNOWN_TAG])


class ToyBaseConfig(StrictModel):
    seed: int = 0
    te_widths: tuple[int, int] = (32, 32)  # keeps the fp16 base (with both 49408-token embeddings) under 25 MB
    vae_images: int = 1500
    vae_steps: int = 600
    vae_lr: float = 2e-3
    base_images: int = 3000
    steps: int = 2000
    batch_size: int = 32
    unet_lr: float = 1e-3
    text_encoder_lr: float = 1e-4
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of each LR
    warmup_steps: int = 50
    caption_dropout: float = 0.1  # whole caption → zero embedding (what CFG's unconditional branch uses)
    tag_dropout: float = 0.5  # each non-subject tag dropped, so short prompts like "red, circle" are in-distribution
    log_every: int = 50
    device: str = "cpu"


def to_tensor(items: list[ToyItem]) -> torch.Tensor:
    """Images → float [N, 3, 32, 32] in [-1, 1]."""
    arrays = np.stack([np.asarray(item.image, dtype=np.float32) for item in items])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    """Linear warmup, then cosine decay from 1 to `final`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, pixels: torch.Tensor, cfg: ToyBaseConfig, log) -> None:
    """Reconstruction MSE + a tiny KL term (keeps the posterior a distribution without blurring)."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    for step in tqdm(range(cfg.vae_steps), desc="vae", unit="step", mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = cfg.vae_lr * lr_factor(step, cfg.vae_steps, 20, 0.05)
        batch = pixels[torch.randint(len(pixels), (cfg.batch_size,), generator=generator)].to(cfg.device)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(cfg.device)).sample
        mse = F.mse_loss(recon, batch)
        loss = mse + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step} mse {mse.item():.5f}")
    vae.eval()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unscaled latents (posterior means), as the latent cache stores them."""
    return torch.cat([vae.encode(pixels[i : i + batch].to(vae.device)).latent_dist.mean for i in range(0, len(pixels), batch)])


@torch.no_grad()
def reconstruction_mse(vae, pixels: torch.Tensor) -> float:
    return F.mse_loss(vae.decode(encode_latents(vae, pixels)).sample.cpu(), pixels).item()


def training_caption(tags: list[str], cfg: ToyBaseConfig, rng: np.random.Generator) -> str:
    """Base-pretraining caption policy: drop the whole caption (→ zeros), else keep subject tags, drop other tags
    at random, and shuffle (the model must not depend on tag order or on tags a prompt leaves out)."""
    if rng.random() < cfg.caption_dropout:
        return ""
    kept = [t for t in tags if t in SUBJECT_TAGS or rng.random() >= cfg.tag_dropout]
    rng.shuffle(kept)
    return ", ".join(kept)


def train_base(components: ModelComponents, latents: torch.Tensor, captions: list[list[str]], cfg: ToyBaseConfig, log) -> int:
    """Denoising (epsilon) loss on UNet + both text encoders. Returns the number of optimizer steps."""
    from diffusers import DDPMScheduler

    from tunelab.models.tiny import SD_SCHEDULE

    noise_schedule = DDPMScheduler(**SD_SCHEDULE)
    scale = components.vae.config.scaling_factor
    unet, encoders = components.unet, components.text_encoders
    groups = [{"params": list(unet.parameters()), "lr": cfg.unet_lr, "base_lr": cfg.unet_lr}]
    # No weight decay on the text encoders: rows of tokens the base world never uses must stay exactly as initialised.
    groups += [{"params": list(te.parameters()), "lr": cfg.text_encoder_lr, "base_lr": cfg.text_encoder_lr, "weight_decay": 0.0} for te in encoders]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    for module in (unet, *encoders):
        module.train()
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    sizes = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE]]).repeat(cfg.batch_size, 1)
    time_ids = sdxl_time_ids(sizes, torch.zeros_like(sizes), sizes).to(cfg.device)
    started = time.time()
    for step in tqdm(range(cfg.steps), desc="unet+te", unit="step", mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.final_lr_fraction)
        index = torch.randint(len(latents), (cfg.batch_size,), generator=generator)
        x0 = latents[index] * scale
        prompts = [training_caption(captions[i], cfg, rng) for i in index.tolist()]
        embeddings = encode_prompts(components, prompts, max_chunks=1, empty_as_zeros=True)
        noise = torch.randn(x0.shape, generator=generator).to(cfg.device)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (cfg.batch_size,), generator=generator).to(cfg.device)
        noisy = noise_schedule.add_noise(x0, noise, t)
        prediction = unet(
            noisy,
            t,
            encoder_hidden_states=embeddings.prompt_embeds,
            added_cond_kwargs={"text_embeds": embeddings.pooled_prompt_embeds, "time_ids": time_ids},
        ).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log(f"base step {step} loss {loss.item():.4f} lr x{lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.final_lr_fraction):.3f} {time.time() - started:.0f}s")
    for module in (unet, *encoders):
        module.eval()
    return cfg.steps


def build_toy_base(cfg: ToyBaseConfig, log=print) -> tuple[ModelComponents, dict]:
    """Train a toy base from scratch. Returns the model (float32) and a record of what was measured."""
    started = time.time()
    components = tiny_sdxl(seed=cfg.seed, te_widths=cfg.te_widths).to(cfg.device)
    record: dict = {"config": cfg.model_dump()}

    vae_pixels = to_tensor(generate("vae", cfg.vae_images, seed=cfg.seed + 100))
    train_vae(components.vae, vae_pixels, cfg, log)
    finetune_pixels = to_tensor(generate("finetune", 96, seed=cfg.seed + 200))  # never seen by the VAE
    record["vae_mse_finetune_world"] = reconstruction_mse(components.vae, finetune_pixels)
    record["vae_seconds"] = time.time() - started
    log(f"vae done: reconstruction mse on unseen finetune images {record['vae_mse_finetune_world']:.4f}")

    base_items = generate("base", cfg.base_images, seed=cfg.seed)
    latents = encode_latents(components.vae, to_tensor(base_items))
    # Scale latents to unit variance, as SD's scaling_factor does for its VAE.
    components.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    record["scaling_factor"] = components.vae.config.scaling_factor
    record["steps"] = train_base(components, latents, [item.tags for item in base_items], cfg, log)
    components.to("cpu")
    record["seconds"] = time.time() - started
    record["threads"] = torch.get_num_threads()
    log(f"done in {record['seconds']:.0f}s ({record['steps']} steps)")
    return components, record


def save_toy_base(components: ModelComponents, record: dict, out: str | Path) -> Path:
    """fp16 diffusers folder (+ `toy_base.json`, the training record)."""
    from tunelab.models.io import save_model

    out = Path(out)
    save_model(components, out, format="diffusers", dtype="fp16")
    # vocab.json + merges.txt (1.5 MB) instead of the fast tokenizer's tokenizer.json (3.6 MB): keeps the base < 25 MB.
    for folder, pad_token in (("tokenizer", EOS), ("tokenizer_2", "!")):
        (out / folder / "tokenizer.json").unlink(missing_ok=True)
        write_tokenizer_files(out / folder, pad_token=pad_token)
    atomic.write_json(out / "toy_base.json", record)
    return out
