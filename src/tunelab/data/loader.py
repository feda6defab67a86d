"""The dataset loader: bucket-aware batches from the SQLite index, deterministic from (seed, epoch).

Public API (what the trainer calls):

    batches = open_batches(data_config, batch_size=16, seed=0, rank=0, world_size=1, text_encoder_mode="off",
                           workers=0)   # workers > 0: threads decode the next batch's images ahead
    batches.batches_per_epoch()                   -> int (the same on every rank)
    batches.epoch_batches(epoch, start_batch=0)   -> Iterator[dict]   (train/batches.py's BatchSource protocol)
    batches.has_text_embeddings                   -> bool (batches carry cached prompt_embeds)
    batches.close()

    # or, without keeping an object:
    train_batches(index, data_config, *, epoch, seed, batch_size, rank=0, world_size=1, start_batch=0,
                  latent_cache=None, text_cache=None) -> Iterator[dict]
    batches_per_epoch(index, *, batch_size, world_size=1) -> int

A batch is the brief's batch contract: "latents" [B, 4, h, w] unscaled (from the latent cache) or "pixel_values"
[B, 3, H, W] in [-1, 1] (decoded, resized and cropped per the bucket), "captions" (processed by the caption policy
of the item's subset; "" = dropped), optionally "prompt_embeds" / "pooled_prompt_embeds" (text cache),
"original_size" / "crop_top_left" / "target_size" LongTensor [B, 2] as (h, w), "item_ids", "is_reg" BoolTensor [B]
(the item's subset holds regularisation images: its loss is weighted by train.prior_loss_weight).

How an epoch is planned (from item ids only; no item row or image is read for planning):
- every bucket's items, each repeated by its subset's `repeats`, are shuffled and cut into *global* batches of
  batch_size × world_size items (a bucket's incomplete remainder sits out this epoch; another one next epoch);
- the global batches of all buckets are shuffled together; rank r takes slice r of every global batch, so the
  ranks see distinct items, the same number of batches, and global batch b holds the same items for any
  world size with the same global batch;
- `start_batch=k` starts at global batch k: the skipped batches' rows and images are never read (resume).
Everything random (order, caption shuffle / dropout) is a function of (seed, epoch, item, occurrence)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from tunelab.data.cache import LatentCache, TextCache, TextSettings, text_cache_refusal_reason
from tunelab.data.captions import SubsetPolicies
from tunelab.data.config import DataConfig
from tunelab.data.index import OK, TRAIN, DatasetIndex
from tunelab.data.pixels import item_pixels, size_conditioning
from tunelab.errors import TunelabError

Bucket = tuple[int, int]


@dataclass(frozen=True)
class BucketItems:
    """One bucket's item ids and how many times each appears per epoch (its subset's repeats)."""

    ids: np.ndarray  # int32 (int64 when an id needs it), id order
    repeats: np.ndarray  # int32, ≥ 1


def compact(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits (half the memory of int64 at 12M items), else int64."""
    fits = len(values) == 0 or (values.min() >= -(2**31) and values.max() < 2**31)
    return values.astype(np.int32 if fits else np.int64)


def read_bucket_items(index: DatasetIndex, split: str = TRAIN) -> dict[Bucket, BucketItems]:
    """Ids + repeats per bucket, from the (status, split, bucket, id, subset_id) index alone: no table page is read
    (12.4M items: ~150 MB of arrays)."""
    repeats_of = {sid: s.repeats for sid, s in index.subsets().items()}
    out = {}
    for bucket in index.bucket_counts(split):
        # Two comma-joined columns parsed by numpy: no Python object per row (12.4M rows: 3x less CPU than tuples).
        ids, subset_ids = index.db.execute(
            "SELECT group_concat(id), group_concat(subset_id) FROM (SELECT id, subset_id FROM items WHERE status = ? "
            "AND split = ? AND bucket_width = ? AND bucket_height = ? ORDER BY id)", (OK, split, *bucket)).fetchone()  # fmt: skip
        ids, subset_ids = (np.fromstring(column, dtype=np.int64, sep=",") for column in (ids, subset_ids))
        if len(ids) > 1 and not (np.diff(ids) > 0).all():  # SQLite does not promise group_concat's order
            order = np.argsort(ids, kind="stable")
            ids, subset_ids = ids[order], subset_ids[order]
        subsets, where = np.unique(subset_ids, return_inverse=True)
        repeats = np.array([max(1, repeats_of.get(int(s), 1)) for s in subsets], dtype=np.int32)[where]
        out[bucket] = BucketItems(compact(ids), repeats)
    return out


def plan_epoch(buckets: dict[Bucket, BucketItems], *, seed: int, epoch: int, global_batch: int) -> np.ndarray:
    """[n_batches, global_batch, 2] of (item_id, occurrence): the epoch's global batches in training order.

    Each bucket's appearances (item i repeated repeats[i] times) are shuffled and cut into global batches, then all
    batches are shuffled. Memory (12.4M items): one bucket's repeated sequence at a time, in int32, and batches
    written straight to their shuffled places (no concatenated copy to permute)."""
    rng = np.random.default_rng([seed, epoch])
    blocks = []
    for bucket in sorted(buckets):
        entry = buckets[bucket]
        item_of = np.repeat(np.arange(len(entry.ids), dtype=np.int32), entry.repeats)  # appearance → item
        starts = np.repeat((np.cumsum(entry.repeats) - entry.repeats).astype(np.int32), entry.repeats)
        n = len(item_of) // global_batch
        take = rng.permutation(len(item_of))[: n * global_batch]
        occurrence = (take - starts[take]).astype(np.int32)  # 0..repeats-1 for each item's appearances
        blocks.append((entry.ids[item_of[take]].reshape(n, global_batch), occurrence.reshape(n, global_batch)))
        del item_of, starts, take, occurrence
    total = sum(len(ids) for ids, _ in blocks)
    order = rng.permutation(total)  # batch `order[j]` of the buckets' batches in sequence is trained j-th
    place = np.empty(total, dtype=np.int64)
    place[order] = np.arange(total)
    dtype = np.result_type(np.int32, *(ids.dtype for ids, _ in blocks))
    plan = np.empty((total, global_batch, 2), dtype=dtype)
    start = 0
    while blocks:
        ids, occurrence = blocks.pop(0)
        where = place[start : start + len(ids)]
        plan[where, :, 0], plan[where, :, 1] = ids, occurrence
        start += len(ids)
    return plan


def count_batches(buckets: dict[Bucket, BucketItems], global_batch: int) -> int:
    return sum(int(b.repeats.sum()) // global_batch for b in buckets.values())


class DatasetBatches:
    """This process's batches of the dataset (see the module docstring). Reads item ids once at construction."""

    def __init__(self, index: DatasetIndex, data_config: DataConfig, *, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, split: str = TRAIN, latent_cache: LatentCache | None = None,
                 text_cache: TextCache | None = None, workers: int = 0):  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.index, self.batch_size, self.seed, self.rank, self.world_size = index, batch_size, seed, rank, world_size
        self.latent_cache, self.text_cache = latent_cache, text_cache
        self.policies = SubsetPolicies.for_index(data_config.captions, index)
        self.regularisation_subsets = {sid for sid, subset in index.subsets().items() if subset.is_reg}
        self.buckets = read_bucket_items(index, split)
        self.global_batch = batch_size * world_size
        self.pool = ThreadPoolExecutor(workers) if workers > 0 else None  # image decoding releases the GIL

    @property
    def has_text_embeddings(self) -> bool:
        return self.text_cache is not None

    def batches_per_epoch(self) -> int:
        return count_batches(self.buckets, self.global_batch)

    def summary(self) -> str:
        """One line for the run log; says how much of each epoch sits out as incomplete bucket remainders (large
        when buckets are small next to batch_size × world_size)."""
        appearances = sum(int(b.repeats.sum()) for b in self.buckets.values())
        used = self.batches_per_epoch() * self.global_batch
        return (f"{sum(len(b.ids) for b in self.buckets.values())} items in {len(self.buckets)} buckets, "
                f"{appearances} appearances per epoch with repeats; {self.batches_per_epoch()} global batches of "
                f"{self.global_batch}; {appearances - used} appearances sit out each epoch (bucket remainders)")  # fmt: skip

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        plan = plan_epoch(self.buckets, seed=self.seed, epoch=epoch, global_batch=self.global_batch)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        ahead = None  # with workers: the next batch's images decode while the caller trains on this one
        for global_batch in plan[start_batch:]:
            ids, occurrences = global_batch[mine, 0].tolist(), global_batch[mine, 1].tolist()
            if self.pool is None:
                yield self.make_batch(ids, occurrences, epoch)
                continue
            started = self._begin_batch(ids, occurrences, epoch)
            if ahead is not None:
                yield self._finish_batch(*ahead)
            ahead = started
        if ahead is not None:
            yield self._finish_batch(*ahead)

    def batch_ids(self, epoch: int, batch: int) -> tuple[list[int], list[int]]:
        """This process's (item ids, occurrences) in global batch `batch` of `epoch`."""
        planned = plan_epoch(self.buckets, seed=self.seed, epoch=epoch, global_batch=self.global_batch)[batch]
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return planned[mine, 0].tolist(), planned[mine, 1].tolist()

    def make_batch(self, ids: list[int], occurrences: list[int], epoch: int) -> dict:
        return self._finish_batch(*self._begin_batch(ids, occurrences, epoch))

    def _begin_batch(self, ids: list[int], occurrences: list[int], epoch: int) -> tuple[dict, list]:
        """Rows, captions, cached tensors now (SQLite stays on this thread); pixels submitted to the pool."""
        items = self.index.get_many(ids)
        captions = [self.policies.prompt(it, seed=self.seed, epoch=epoch, occurrence=o) for it, o in zip(items, occurrences)]
        batch: dict = {"item_ids": ids, "captions": captions, **size_conditioning(items),
                       "is_reg": torch.tensor([it.subset_id in self.regularisation_subsets for it in items])}
        pixels: list = []
        if self.latent_cache is not None:
            batch["latents"] = self.latent_cache.latents(items)
        elif self.pool is not None:
            pixels = [self.pool.submit(item_pixels, it) for it in items]
        else:
            pixels = [item_pixels(it) for it in items]
        if self.text_cache is not None:
            batch.update(self.text_cache.embeddings(items, captions))
        return batch, pixels

    @staticmethod
    def _finish_batch(batch: dict, pixels: list) -> dict:
        if pixels:
            batch["pixel_values"] = torch.stack([p.result() if isinstance(p, Future) else p for p in pixels])
        return batch

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()
        for cache in (self.latent_cache, self.text_cache):
            if cache is not None:
                cache.close()
        self.index.close()


def open_batches(data_config: DataConfig, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 text_encoder_mode: str = "off", split: str = TRAIN, workers: int = 0, components=None,
                 text_settings: TextSettings | None = None) -> DatasetBatches:  # fmt: skip
    """Open the index and the caches `[data.cache]` asks for. A text cache that would be wrong (random captions,
    trained text encoders) is refused with the reason; a latent cache must have been built (`tunelab cache`).
    With `components` (and `text_settings`), caches made by another VAE / text encoders / settings are refused."""
    index = DatasetIndex.open_existing(data_config.index)
    vae = None if components is None else components.vae
    latent_cache = LatentCache.for_config(data_config.cache, vae) if data_config.cache.latents else None
    text_cache = None
    if data_config.cache.text_embeddings:
        configs = SubsetPolicies.for_index(data_config.captions, index).configs()
        reason = text_cache_refusal_reason(data_config.captions, text_encoder_mode, configs)
        if reason:
            raise TunelabError(f"[data.cache] text_embeddings refused: {reason}")
        text_cache = TextCache.for_config(data_config.cache, components, text_settings)
    return DatasetBatches(index, data_config, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                          split=split, latent_cache=latent_cache, text_cache=text_cache, workers=workers)  # fmt: skip


def train_batches(index: DatasetIndex, data_config: DataConfig, *, epoch: int, seed: int, batch_size: int,
                  rank: int = 0, world_size: int = 1, start_batch: int = 0, latent_cache: LatentCache | None = None,
                  text_cache: TextCache | None = None) -> Iterator[dict]:  # fmt: skip
    """One epoch of this rank's training batches, from global batch `start_batch` on."""
    source = DatasetBatches(index, data_config, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                            latent_cache=latent_cache, text_cache=text_cache)  # fmt: skip
    yield from source.epoch_batches(epoch, start_batch)


def batches_per_epoch(index: DatasetIndex, *, batch_size: int, world_size: int = 1) -> int:
    return count_batches(read_bucket_items(index), batch_size * world_size)
