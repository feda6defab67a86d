"""Latent and text-embedding caches over `ShardStore` (see shards.py for the on-disk format and its guarantees).

Latents: the VAE's `latent_dist.mean` of each usable item (train and validation), **unscaled** (the trainer
multiplies by `vae.config.scaling_factor`), at the item's bucket size, stored per item as "<id>.latents"
[4, h, w]. Keyed by content hash + resize/crop/bucket, so a changed image or bucket setting is recomputed.

Text embeddings: encode_prompts' output per item ("<id>.prompt_embeds" [77·n, D], "<id>.pooled_prompt_embeds"),
keyed by the prompt. Cached only when that is right: text encoders frozen and every caption policy deterministic
(`text_cache_refusal_reason`). A batch pads shorter prompts with the encoded empty chunk, exactly as
`encode_prompts` does, so cached and live conditioning are the same numbers.

Both builders skip what is already cached: an interrupted run resumes, whole shards are never recomputed."""

from __future__ import annotations

import hashlib
import time
from itertools import groupby
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from tunelab.atomic import save_safetensors
from tunelab.data.cache_config import CacheConfig
from tunelab.data.caption_config import CaptionConfig, text_randomness
from tunelab.data.captions import SubsetPolicies
from tunelab.data.index import DatasetIndex, IndexItem
from tunelab.data.pixels import item_pixels
from tunelab.data.shards import WHOLE, ShardProblem, ShardStore, WorkShare, shared_store
from tunelab.errors import TunelabError
from tunelab.models.text_conditioning import CHUNK_TOKENS, chunk_token_ids, encode_prompts

CHUNK = CHUNK_TOKENS + 2
EMPTY_CHUNK = "empty_chunk.safetensors"  # the text store's encoded empty chunk
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CacheStats:
    items: int = 0  # usable items in the index
    computed: int = 0  # encoded this run
    reused: int = 0  # already cached with the same key
    shards_written: int = 0
    leftovers_removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, what: str) -> str:
        return (f"{what}: {self.items} items, {self.computed} computed, {self.reused} already cached, "
                f"{self.shards_written} shards written; {self.seconds:.1f} s")  # fmt: skip


def weights_fingerprint(*modules: torch.nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, dtypes, values): which weights made a cache."""
    h = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _items_of(index: DatasetIndex, share: WorkShare = WHOLE, run: int = 1) -> Iterator[IndexItem]:
    """Every usable item, train and validation, bucket by bucket (so an encode batch shares one shape); with a
    share, this process's runs of `run` items of that sequence (a fresh build's shards are then exactly those of
    one process, encoded in the same batches)."""
    if share.world == 1:
        for bucket in index.bucket_counts(split=None):
            yield from index.iter_items(split=None, bucket=bucket)
        return
    position = 0
    for bucket in index.bucket_counts(split=None):
        ids = index.item_ids(split=None, bucket=bucket)
        mine = [item_id for at, item_id in enumerate(ids, position) if share.takes(at, run)]
        position += len(ids)
        for page in _chunks(mine, 1000):
            yield from index.get_many(page)


def _share_count(index: DatasetIndex, share: WorkShare, run: int) -> int:
    total = index.count(None)
    return sum(min(run, total - start) for start in range(share.rank * run, total, share.world * run))


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _build(store: ShardStore, items: Iterator[IndexItem], total: int, key_of: Callable[[IndexItem], str],
           encode: Callable[[list[IndexItem]], list[dict[str, torch.Tensor]]], config: CacheConfig,
           desc: str, progress: bool, on_shard: Callable[[str], None] | None) -> CacheStats:  # fmt: skip
    """Shared resumable loop: find uncached items page by page, encode them in batches, write full shards."""
    started = time.perf_counter()
    stats = CacheStats(leftovers_removed=store.remove_leftovers())
    pending: list[IndexItem] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)

    def flush() -> None:
        tensors, keys = {}, {}
        for _, same_bucket in groupby(pending, key=lambda it: it.bucket):  # one shape per encode batch
            for batch in _chunks(same_bucket, config.batch_size):
                for item, named in zip(batch, encode(batch)):
                    tensors[item.id], keys[item.id] = named, key_of(item)
                bar.update(len(batch))
        name = store.write_shard(tensors, keys)
        stats.shards_written += 1
        stats.computed += len(pending)
        pending.clear()
        if on_shard is not None:
            on_shard(name)

    for page in _chunks(items, 1000):
        stats.items += len(page)
        cached = store.keys_of([it.id for it in page])
        for item in page:
            if cached.get(item.id) == key_of(item):
                stats.reused += 1
                bar.update(1)
                continue
            pending.append(item)
            if len(pending) == config.shard_items:
                flush()
    if pending:
        flush()
    bar.close()
    stats.seconds = time.perf_counter() - started
    return stats


# --- latents ---------------------------------------------------------------------------------------------------


def latent_key(item: IndexItem) -> str:
    return (f"{item.content_hash}:{item.resize_width}x{item.resize_height}+{item.crop_left}+{item.crop_top}"
            f":{item.bucket_width}x{item.bucket_height}")  # fmt: skip


def latent_fingerprint(vae: torch.nn.Module, config: CacheConfig) -> dict:
    return {"kind": "latents", "vae": weights_fingerprint(vae), "dtype": config.dtype}


def encode_latents(vae, items: list[IndexItem], dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    """Decode + resize + crop each item, encode the batch: unscaled `latent_dist.mean`, one [4, h, w] per item."""
    pixels = torch.stack([item_pixels(it) for it in items]).to(vae.device, vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    return [{"latents": latent.to("cpu", dtype)} for latent in latents]


def build_latent_cache(index: DatasetIndex, vae, config: CacheConfig, *, progress: bool = True,
                       on_shard: Callable[[str], None] | None = None, share: WorkShare = WHOLE) -> CacheStats:  # fmt: skip
    """Cache the latents of every usable item not cached yet under `config.dir / "latents"` (with `share`: this
    process's part; every process of the share calls it)."""
    dtype = _DTYPES[config.dtype]
    with shared_store(Path(config.dir) / "latents", latent_fingerprint(vae, config), share) as store:
        return _build(store, _items_of(index, share, config.shard_items), _share_count(index, share, config.shard_items),
                      latent_key, lambda batch: encode_latents(vae, batch, dtype), config, "latents", progress, on_shard)  # fmt: skip


class LatentCache:
    """Read side for the loader: `latents(items)` → [B, 4, h, w] (one bucket per batch)."""

    def __init__(self, folder: str | Path, fingerprint: dict | None = None):
        """With `fingerprint` (`latent_fingerprint(vae, config)`), a cache made by another VAE is refused."""
        self.store = ShardStore(folder, fingerprint, create=False)

    @classmethod
    def for_config(cls, config: CacheConfig, vae=None) -> "LatentCache":
        return cls(Path(config.dir) / "latents", None if vae is None else latent_fingerprint(vae, config))

    def latents(self, items: list[IndexItem]) -> torch.Tensor:
        rows = self.store.read([it.id for it in items], ["latents"], [latent_key(it) for it in items])
        return torch.stack([r["latents"] for r in rows]).float()

    def close(self) -> None:
        self.store.close()


# --- text embeddings -------------------------------------------------------------------------------------------


def text_cache_refusal_reason(caption_config: CaptionConfig, text_encoder_mode: str,
                              subset_configs: Iterable[CaptionConfig] = ()) -> str | None:  # fmt: skip
    """Why caching text-encoder outputs would train on wrong conditioning, or None when it is safe."""
    if text_encoder_mode != "off":
        return f'text encoders are trained (text_encoder.mode = "{text_encoder_mode}"): their outputs change every step'
    for config in (caption_config, *subset_configs):
        why = text_randomness(config)
        if why:
            return f"captions change from epoch to epoch ({why})"
    return None


def prompt_key(prompt: str) -> str:
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class TextSettings:
    """What the trainer encodes with (from [train]); part of the cache's fingerprint."""

    clip_skip: int | None = None
    max_chunks: int = 3
    empty_as_zeros: bool = True


def text_fingerprint(components, settings: TextSettings, config: CacheConfig) -> dict:
    return {"kind": "text", "architecture": components.architecture, "dtype": config.dtype,
            "text_encoders": weights_fingerprint(*components.text_encoders), "clip_skip": settings.clip_skip,
            "max_chunks": settings.max_chunks, "empty_as_zeros": settings.empty_as_zeros}  # fmt: skip


def encode_text_items(components, prompts: list[str], settings: TextSettings, dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    """Each prompt's own chunks (not padded to the batch's longest) and its pooled embedding."""
    with torch.no_grad():
        out = encode_prompts(components, prompts, clip_skip=settings.clip_skip, max_chunks=settings.max_chunks,
                             empty_as_zeros=settings.empty_as_zeros)  # fmt: skip
    rows = []
    for i, prompt in enumerate(prompts):
        chunks = len(chunk_token_ids(components.tokenizers[0], prompt, settings.max_chunks))
        row = {"prompt_embeds": out.prompt_embeds[i, : chunks * CHUNK].to("cpu", dtype)}
        if out.pooled_prompt_embeds is not None:
            row["pooled_prompt_embeds"] = out.pooled_prompt_embeds[i].to("cpu", dtype)
        rows.append(row)
    return rows


def build_text_cache(index: DatasetIndex, components, caption_config: CaptionConfig, config: CacheConfig,
                     *, text_encoder_mode: str, settings: TextSettings = TextSettings(), progress: bool = True,
                     on_shard: Callable[[str], None] | None = None, share: WorkShare = WHOLE) -> CacheStats:  # fmt: skip
    """Cache every usable item's prompt embeddings under `config.dir / "text"`; refused (TunelabError with the
    reason) when captions are random or text encoders train."""
    policies = SubsetPolicies.for_index(caption_config, index)
    reason = text_cache_refusal_reason(caption_config, text_encoder_mode, policies.configs())
    if reason:
        raise TunelabError(f"text-embedding cache refused: {reason}")
    dtype = _DTYPES[config.dtype]

    def prompt_of(item: IndexItem) -> str:
        return policies.prompt(item, seed=0, epoch=0)  # deterministic: any seed/epoch gives the same text

    with shared_store(Path(config.dir) / "text", text_fingerprint(components, settings, config), share) as store:
        empty_path = store.folder / EMPTY_CHUNK
        if share.is_main and not empty_path.exists():
            empty = encode_text_items(components, [""], TextSettings(settings.clip_skip, 1, False), dtype)[0]
            save_safetensors(empty_path, {"prompt_embeds": empty["prompt_embeds"]})
        return _build(store, _items_of(index, share, config.shard_items), _share_count(index, share, config.shard_items),
                      lambda it: prompt_key(prompt_of(it)),
                      lambda batch: encode_text_items(components, [prompt_of(it) for it in batch], settings, dtype),
                      config, "text", progress, on_shard)  # fmt: skip


class TextCache:
    """Read side for the loader: `embeddings(items, captions)` → dict with "prompt_embeds" [B, 77·n, D] (padded
    with the encoded empty chunk, or zeros for "" captions when empty_as_zeros) and "pooled_prompt_embeds"."""

    def __init__(self, folder: str | Path, fingerprint: dict | None = None):
        """With `fingerprint` (`text_fingerprint(...)`), a cache made by other encoders / settings is refused."""
        from safetensors.torch import load_file

        self.store = ShardStore(folder, fingerprint, create=False)
        self.empty_chunk = load_file(str(Path(folder) / EMPTY_CHUNK))["prompt_embeds"].float()
        fingerprint = self.store.fingerprint or {}
        self.empty_as_zeros = bool(fingerprint.get("empty_as_zeros", False))
        self.has_pooled = fingerprint.get("architecture") == "sdxl"  # SDXL's pooled embedding from TE2

    @classmethod
    def for_config(cls, config: CacheConfig, components=None, settings: TextSettings | None = None) -> "TextCache":
        check = components is not None and settings is not None
        return cls(Path(config.dir) / "text", text_fingerprint(components, settings, config) if check else None)

    def embeddings(self, items: list[IndexItem], captions: list[str]) -> dict[str, torch.Tensor]:
        names = ["prompt_embeds"] + (["pooled_prompt_embeds"] if self.has_pooled else [])
        rows = self.store.read([it.id for it in items], names, [prompt_key(c) for c in captions])
        longest = max(r["prompt_embeds"].shape[0] for r in rows)
        padded = []
        for row, caption in zip(rows, captions):
            embeds = row["prompt_embeds"].float()
            missing = (longest - embeds.shape[0]) // CHUNK
            pad = torch.zeros_like(self.empty_chunk) if (caption == "" and self.empty_as_zeros) else self.empty_chunk
            padded.append(torch.cat([embeds, *([pad] * missing)]))
        out = {"prompt_embeds": torch.stack(padded)}
        if "pooled_prompt_embeds" in names:
            out["pooled_prompt_embeds"] = torch.stack([r["pooled_prompt_embeds"].float() for r in rows])
        return out

    def close(self) -> None:
        self.store.close()


def verify_caches(config: CacheConfig, *, repair: bool = False) -> dict[str, list[ShardProblem]]:
    """{"latents": problems, "text": problems} for the stores that exist; with `repair`, bad shards are dropped
    from the catalogue (their items are recomputed by the next build) and leftovers deleted."""
    report = {}
    for kind in ("latents", "text"):
        folder = Path(config.dir) / kind
        if not (folder / "catalogue.sqlite").exists():
            continue
        with ShardStore(folder, create=False) as store:
            problems = store.verify() + (_check_empty_chunk(folder) if kind == "text" else [])
            if repair:
                if kind == "text" and any(p.shard == EMPTY_CHUNK for p in problems):
                    (folder / EMPTY_CHUNK).unlink(missing_ok=True)  # the next build encodes it again
                known = set(store.shard_names())
                store.drop_shards([p.shard for p in problems if p.shard in known])
                store.remove_leftovers()
            report[kind] = problems
    return report


def _check_empty_chunk(folder: Path) -> list[ShardProblem]:
    """The text store's encoded empty chunk (the padding of shorter prompts) must load."""
    from safetensors.torch import load_file

    try:
        load_file(str(folder / EMPTY_CHUNK))["prompt_embeds"]
    except Exception as e:  # missing file, bad header, missing tensor: all mean "rebuild it"
        return [ShardProblem(EMPTY_CHUNK, f"unreadable ({type(e).__name__})")]
    return []
