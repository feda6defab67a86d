"""The loader's bookkeeping at a million items (metadata only, no images): what it costs to plan an epoch and to
start at batch 0 versus in the middle of an epoch (resume), and the per-batch cost of index rows + captions.

  build      write N synthetic items (7 buckets, 2 subsets, booru-like tags) into a SQLite index
  open       DatasetBatches(...): read ids + repeats per bucket (once per run)
  plan       plan_epoch: shuffle within buckets, cut into global batches, shuffle batches
  start@0 / start@mid   plan + the ids of the first batch handed out, starting at batch 0 / at the middle
  batch rows+captions   index.get_many + caption policy (shuffle, keep_tokens, tag dropout) for one batch

Prints seconds, peak RSS, and the ratio start@mid / start@0 (≈ 1: resuming does not read skipped items).
Run: .venv/bin/python bench/loader_scale.py [--items 1000000] [--batch-size 16] [--world-size 1]"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from tunelab.data.config import DataConfig
from tunelab.data.index import DatasetIndex, IndexItem
from tunelab.data.loader import DatasetBatches, plan_epoch

BUCKETS = [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768)]
VOCAB = [f"tag_{i}" for i in range(5000)]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: Path, items: int) -> None:
    rng = random.Random(0)
    with DatasetIndex(path) as index:
        subsets = [index.upsert_subset("main", repeats=1), index.upsert_subset("3_extra", repeats=3)]

        def rows():
            for i in range(items):
                w, h = BUCKETS[i % len(BUCKETS)]
                yield IndexItem(path=f"/images/{i:08d}.png", subset_id=subsets[i % 10 == 0], width=w, height=h,
                                bucket_width=w, bucket_height=h, resize_width=w, resize_height=h,
                                content_hash=f"{i:032x}", tags=", ".join(rng.sample(VOCAB, 25)))  # fmt: skip

        index.write_items(rows(), batch_rows=5000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--world-size", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "index.sqlite"
        t = time.perf_counter()
        build(db, args.items)
        print(f"build      {args.items:,} items: {time.perf_counter() - t:6.1f} s   peak RSS {peak_mb():6.0f} MB")

        config = DataConfig.model_validate({"index": str(db), "sources": [{"type": "folder", "path": tmp}],
                                            "captions": {"shuffle_caption": True, "keep_tokens": 1,
                                                         "caption_tag_dropout_rate": 0.1}})  # fmt: skip
        index = DatasetIndex.open_existing(db)
        t = time.perf_counter()
        source = DatasetBatches(index, config, batch_size=args.batch_size, seed=0, world_size=args.world_size)
        print(f"open       {time.perf_counter() - t:6.2f} s   peak RSS {peak_mb():6.0f} MB")
        per_epoch = source.batches_per_epoch()
        t = time.perf_counter()
        plan = plan_epoch(source.buckets, seed=0, epoch=0, global_batch=source.global_batch)
        print(f"plan       {time.perf_counter() - t:6.2f} s   {per_epoch:,} batches/epoch, plan array {plan.nbytes / 2**20:.0f} MB")

        def first_ids(start: int) -> tuple[float, list[int]]:
            t = time.perf_counter()
            p = plan_epoch(source.buckets, seed=0, epoch=1, global_batch=source.global_batch)
            ids = p[start, : args.batch_size, 0].tolist()
            return time.perf_counter() - t, ids

        t0, _ = first_ids(0)
        t_mid, mid_ids = first_ids(per_epoch // 2)
        print(f"start@0    {t0:6.2f} s")
        print(f"start@mid  {t_mid:6.2f} s   ratio start@mid / start@0 = {t_mid / t0:.2f}")

        rounds = 200
        t = time.perf_counter()
        for r in range(rounds):
            ids = plan[r * 7 % len(plan), : args.batch_size, 0].tolist()
            items = index.get_many(ids)
            [source.policies.prompt(it, seed=0, epoch=0) for it in items]
        per_batch = (time.perf_counter() - t) / rounds
        print(f"batch rows+captions  {per_batch * 1000:6.2f} ms per batch of {args.batch_size}   peak RSS {peak_mb():6.0f} MB")
        assert len(set(np.asarray(mid_ids).tolist())) == len(mid_ids)
        index.close()


if __name__ == "__main__":
    main()
