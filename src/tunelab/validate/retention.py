"""The retention set: latents the *base* model generates from retention prompts (concepts that must survive).

A finetune that forgets a concept stops predicting the noise on what the base model drew for it, so forgetting
shows up as a rising denoising loss — without any extra data. The set is generated once per base model and cached
on disk as unscaled latents (no VAE round trip), keyed by the base model's fingerprint, the prompts, seeds and
sampling settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from tunelab import atomic
from tunelab.evaluate.samplers import make_scheduler
from tunelab.models.components import ModelComponents
from tunelab.models.text_conditioning import encode_prompts
from tunelab.train.config import RunConfig
from tunelab.validate.config import ValidationConfig
from tunelab.validate.sets import ValidationItem, ValidationSet

_CHUNK = 1 << 23


def file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(path: str | Path, memo: Path | None = None) -> str:
    """sha256 over a model file, or over every file of a model folder (relative names and contents).

    `memo`: a JSON file remembering each file's hash by (size, mtime), so a multi-GB base is read once, not at
    every run start."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    known = json.loads(memo.read_text()) if memo is not None and memo.exists() else {}
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        entry = known.get(str(file))
        if entry is None or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            entry = known[str(file)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(file)}
        digest.update(f"{file.relative_to(path).as_posix() if file != path else ''}\0{entry['sha256']}\n".encode())
    if memo is not None:
        atomic.write_json(memo, known)
    return digest.hexdigest()


def image_seed(seed: int, prompt: str, sample: int) -> int:
    """Each image's seed depends on its own prompt and sample index only: adding a prompt leaves the others' images."""
    digest = hashlib.sha256(f"{seed}\0{prompt}\0{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def retention_requests(config: ValidationConfig) -> list[tuple[str, int, int]]:
    """(prompt, sample index, seed) of every retention image."""
    return [(prompt, k, image_seed(config.seed, prompt, k))
            for prompt in config.retention_prompts for k in range(config.samples_per_prompt)]


def generation_settings(config: ValidationConfig, run_config: RunConfig, size: int) -> dict:
    """Everything that changes the generated latents besides the base model (the cache key)."""
    return {"requests": retention_requests(config), "steps": config.retention_steps,
            "sampler": config.retention_sampler, "cfg_scale": config.retention_cfg_scale, "size": size,
            "clip_skip": run_config.train.clip_skip, "max_chunks": run_config.train.max_chunks,
            "empty_as_zeros": run_config.train.empty_caption_as_zeros}


def cache_path(cache_dir: Path, base_fingerprint: str, settings: dict) -> Path:
    key = hashlib.sha256(json.dumps({"base": base_fingerprint, **settings}, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"retention-{key[:24]}.safetensors"


@torch.no_grad()
def generate_latents(base: ModelComponents, settings: dict, progress: bool = True) -> torch.Tensor:
    """Unscaled latents [N, 4, h, w]: one pipeline call per prompt, one generator per image."""
    pipe = base.pipeline()
    pipe.set_progress_bar_config(disable=True)
    by_prompt: dict[str, list[int]] = {}
    for prompt, _, seed in settings["requests"]:
        by_prompt.setdefault(prompt, []).append(seed)
    vae_config = base.vae.config
    shift = getattr(vae_config, "shift_factor", None) or 0.0
    latents = []
    for prompt, seeds in tqdm(by_prompt.items(), desc="retention set", unit="prompt", disable=not progress):
        emb = encode_prompts(base, [prompt, ""], clip_skip=settings["clip_skip"], max_chunks=settings["max_chunks"],
                             empty_as_zeros=settings["empty_as_zeros"])
        n = len(seeds)
        conditioning = {"prompt_embeds": emb.prompt_embeds[:1].expand(n, -1, -1),
                        "negative_prompt_embeds": emb.prompt_embeds[1:].expand(n, -1, -1)}
        if emb.pooled_prompt_embeds is not None:
            conditioning.update(pooled_prompt_embeds=emb.pooled_prompt_embeds[:1].expand(n, -1),
                                negative_pooled_prompt_embeds=emb.pooled_prompt_embeds[1:].expand(n, -1))
        pipe.scheduler = make_scheduler(settings["sampler"], base.scheduler)  # fresh: schedulers keep state
        out = pipe(**conditioning, num_inference_steps=settings["steps"], guidance_scale=settings["cfg_scale"],
                   height=settings["size"], width=settings["size"], output_type="latent",
                   generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images
        latents.append(out.float().cpu() / vae_config.scaling_factor + shift)  # pipeline latents are scaled
    return torch.cat(latents)


def retention_set(config: ValidationConfig, run_config: RunConfig, *, base_fingerprint: str,
                  load_base: Callable[[], ModelComponents], size: int, progress: bool = True) -> ValidationSet:
    """The cached retention set at size × size pixels, generated with the base model (`load_base()` is called only
    on a cache miss)."""
    settings = generation_settings(config, run_config, size)
    path = cache_path(config.cache_dir, base_fingerprint, settings)
    if path.exists():
        from safetensors.torch import load_file

        latents = load_file(path)["latents"]
    else:
        latents = generate_latents(load_base(), settings, progress)
        atomic.save_safetensors(path, {"latents": latents}, metadata={
            "base_fingerprint": base_fingerprint, "settings": json.dumps(settings)})
    items = [ValidationItem(key=f"retention:{prompt}#{k}", latents=latents[i], caption=prompt,
                            original_size=(size, size), crop_top_left=(0, 0), target_size=(size, size))
             for i, (prompt, k, _) in enumerate(settings["requests"])]
    return ValidationSet("retention", items)
