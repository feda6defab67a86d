"""`tunelab cache CONFIG`: build the caches a run config's `[data.cache]` asks for, or check them (`--verify`).

Needs the run config's [model] (the VAE / text encoders to encode with), [text_encoder] mode (a text cache is
refused when text encoders train) and [train] clip_skip / max_chunks / empty_caption_as_zeros (what the trainer
would encode with, so cached and live conditioning agree)."""

from __future__ import annotations

from pathlib import Path

from tunelab.data.cache import (
    TextSettings,
    build_latent_cache,
    build_text_cache,
    text_cache_refusal_reason,
    verify_caches,
)
from tunelab.data.cache_config import CacheConfig
from tunelab.data.captions import SubsetPolicies
from tunelab.data.index import DatasetIndex
from tunelab.errors import TunelabError, fail


def build_caches(config_path: str | Path, *, progress: bool = True) -> list[str]:
    """Build (or resume) the latent and text caches; returns summary lines."""
    from tunelab.models.io import load_model
    from tunelab.train.config import load_run_config

    config = load_run_config(config_path)
    data = config.data
    if data is None:
        raise fail(config_path, "no [data] table")
    if not (data.cache.latents or data.cache.text_embeddings):
        return ["nothing to cache: set [data.cache] latents = true and/or text_embeddings = true"]
    lines = []
    with DatasetIndex.open_existing(data.index) as index:
        if data.cache.text_embeddings:  # refuse before spending time on the model or the latents
            configs = SubsetPolicies.for_index(data.captions, index).configs()
            reason = text_cache_refusal_reason(data.captions, config.text_encoder.mode, configs)
            if reason:
                raise TunelabError(f"text-embedding cache refused: {reason}")
        components = load_model(config.model.path, dtype=config.model.dtype)  # as the trainer loads it
        if data.cache.latents:
            lines.append(build_latent_cache(index, components.vae, data.cache, progress=progress).summary("latents"))
        if data.cache.text_embeddings:
            settings = TextSettings(config.train.clip_skip, config.train.max_chunks, config.train.empty_caption_as_zeros)
            stats = build_text_cache(index, components, data.captions, data.cache, text_encoder_mode=config.text_encoder.mode,
                                     settings=settings, progress=progress)  # fmt: skip
            lines.append(stats.summary("text embeddings"))
    return lines


def verify_lines(cache_config: CacheConfig, *, repair: bool = False) -> tuple[list[str], bool]:
    """(report lines, sound?) for the caches under `cache_config.dir`."""
    report = verify_caches(cache_config, repair=repair)
    if not report:
        return [f"no caches under {cache_config.dir}"], True
    lines, sound = [], True
    for kind, problems in report.items():
        lines.append(f"{kind}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        lines += [f"  {p}" for p in problems]
        sound &= not problems
    if repair and not sound:
        lines.append("repaired: bad shards dropped; run `tunelab cache CONFIG` to recompute their items")
    return lines, sound
