"""`tunelab cache CONFIG`: build the caches a run config's `[data.cache]` asks for, or check them (`--verify`).

Needs the run config's [model] (the VAE / text encoders to encode with), [text_encoder] mode (a text cache is
refused when text encoders train) and [train] clip_skip / max_chunks / empty_caption_as_zeros (what the trainer
would encode with, so cached and live conditioning agree).

Under `accelerate launch` (or `torchrun`; any number of processes on one or many machines sharing the cache
folder) every process encodes its share of the items on its own device and writes its own shards; see
`shards.shared_store`. A process that dies loses only the shard it was writing: the next launch, with any number
of processes, takes in what every process finished and computes the rest."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path
from typing import Callable

from tunelab.data.cache import (
    CacheStats,
    TextSettings,
    build_latent_cache,
    build_text_cache,
    text_cache_refusal_reason,
)
from tunelab.data.captions import SubsetPolicies
from tunelab.data.index import DatasetIndex
from tunelab.data.shards import WorkShare
from tunelab.errors import TunelabError, fail


SHARE_WAIT_HOURS = 12  # the longest one process waits for the others (see process_share)


def process_share():
    """(this process's WorkShare, its device) from torch.distributed as `accelerate launch` / `torchrun` set it up:
    one process without them."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    # gloo on CPU, as training does. The timeout: a process whose share is done waits at the end for the others,
    # and after a partial earlier build the shares left can differ by hours of encoding (torch's default: 30 min).
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=SHARE_WAIT_HOURS))
    return WorkShare(state.process_index, state.num_processes, state.wait_for_everyone), state.device


def summed(stats: CacheStats, share: WorkShare) -> CacheStats:
    """Every process's counts added up (the main process's list of leftovers, the slowest process's time)."""
    if share.world == 1:
        return stats
    from accelerate.utils import gather_object

    everyone = gather_object([astuple(stats)])
    return CacheStats(*(sum(s[i] for s in everyone) for i in range(4)), everyone[0][4], max(s[5] for s in everyone))


def build_caches(config_path: str | Path, *, progress: bool = True,
                 on_shard: Callable[[str], None] | None = None) -> list[str]:  # fmt: skip
    """Build (or resume) this process's share of the latent and text caches; returns summary lines (of every
    process's counts added up; on the main process only). `on_shard(name)` after each shard this process writes."""
    from tunelab.models.io import load_model
    from tunelab.train.config import load_run_config, require_model_path

    config = load_run_config(config_path)
    require_model_path(config, config_path)
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
        share, device = process_share()
        progress = progress and share.is_main  # one bar, not one per process on top of each other
        components = load_model(config.model.path, dtype=config.model.dtype)  # as the trainer loads it
        if data.cache.latents:
            stats = build_latent_cache(index, components.vae.to(device), data.cache, progress=progress,
                                       on_shard=on_shard, share=share)  # fmt: skip
            lines.append(summed(stats, share).summary("latents"))
        if data.cache.text_embeddings:
            for encoder in components.text_encoders:
                encoder.to(device)
            settings = TextSettings(config.train.clip_skip, config.train.max_chunks, config.train.empty_caption_as_zeros)
            stats = build_text_cache(index, components, data.captions, data.cache, text_encoder_mode=config.text_encoder.mode,
                                     settings=settings, progress=progress, on_shard=on_shard, share=share)  # fmt: skip
            lines.append(summed(stats, share).summary("text embeddings"))
    return lines if share.is_main else []
