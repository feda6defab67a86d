"""Batch sources for the loop, and the stream of micro-batches across epochs with its resumable position.

A batch source yields this process's batches of an epoch, in the batch contract of the brief (latents or
pixel_values, captions, optional prompt_embeds / pooled_prompt_embeds, size conditioning, item_ids). Its order is
a function of (seed, epoch) only, global batch b holds the same items however many processes share it (process r
gets the r-th slice), and an epoch can start at any batch without touching the skipped ones.
`InMemoryBatches` is that contract over tensors (tests, benchmarks); the dataset loader is the real one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from tunelab.errors import TunelabError


class BatchSource(Protocol):
    def batches_per_epoch(self) -> int: ...

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]: ...


class InMemoryBatches:
    def __init__(self, items: dict, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        """`items`: "latents" (or "pixel_values") [N, ...], "captions" list[str] of N, optional per-item tensors
        ("prompt_embeds", "pooled_prompt_embeds", ...)."""
        self.items = items
        self.count = len(items["captions"])
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        if self.count < batch_size * world_size:
            raise ValueError(f"{self.count} items cannot fill one global batch of {batch_size * world_size}")

    @property
    def has_text_embeddings(self) -> bool:
        """Batches carry cached text embeddings, so frozen text encoders need not be loaded."""
        return "prompt_embeds" in self.items

    def batches_per_epoch(self) -> int:
        return self.count // (self.batch_size * self.world_size)  # the last incomplete global batch is dropped

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        global_batch = self.batch_size * self.world_size
        for b in range(start_batch, self.batches_per_epoch()):
            start = b * global_batch + self.rank * self.batch_size
            ids = order[start : start + self.batch_size].tolist()
            batch = {key: (value[ids] if torch.is_tensor(value) else [value[i] for i in ids])
                     for key, value in self.items.items()}
            batch["item_ids"] = ids
            yield batch


@dataclass
class DataPosition:
    """Where the next micro-batch comes from: epoch and batch index within it (this is what resume restores)."""

    epoch: int = 0
    batch: int = 0


def micro_batches(source: BatchSource, position: DataPosition) -> Iterator[dict]:
    """Endless micro-batches from `position` on; `position` is advanced past each batch as it is handed out."""
    per_epoch = source.batches_per_epoch()
    if per_epoch == 0:  # e.g. prepare skipped every image, or buckets smaller than a batch: say so, not a traceback
        summary = source.summary() if hasattr(source, "summary") else ""
        raise TunelabError("the training data gives no complete batch" + (f" ({summary})" if summary else "")
                           + ": lower train.batch_size, or add images (see the skip report of `tunelab prepare`)")
    while True:
        for batch in source.epoch_batches(position.epoch, position.batch):
            position.batch += 1
            if position.batch == per_epoch:
                position.epoch, position.batch = position.epoch + 1, 0
            yield batch
        if position.batch != 0:  # the source ended early: start the next epoch anyway
            position.epoch, position.batch = position.epoch + 1, 0
