"""The epoch plan at scale: the memory-lean plan_epoch gives exactly the batches of its definition (each bucket's
appearances repeated, shuffled and cut, then all batches shuffled), and ids + subsets are read from the bucket
index alone (an index written before subset_id was in it gets the new one when opened for writing)."""

import sqlite3

import numpy as np

from tunelab.data.index import DatasetIndex, IndexItem
from tunelab.data.loader import BucketItems, plan_epoch, read_bucket_items


def plan_by_definition(buckets: dict, *, seed: int, epoch: int, global_batch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch])
    planned = []
    for bucket in sorted(buckets):
        ids, repeats = buckets[bucket].ids.astype(np.int64), buckets[bucket].repeats
        appearances = np.repeat(ids, repeats)
        occurrence = np.concatenate([np.arange(r) for r in repeats])
        n = len(appearances) // global_batch
        take = rng.permutation(len(appearances))[: n * global_batch].reshape(n, global_batch)
        planned.append(np.stack([appearances[take], occurrence[take]], axis=-1))
    batches = np.concatenate(planned)
    return batches[rng.permutation(len(batches))]


def test_plan_equals_its_definition():
    rng = np.random.default_rng(0)
    for trial in range(20):
        buckets = {}
        for b in range(int(rng.integers(1, 5))):
            n = int(rng.integers(1, 200))
            ids = np.sort(rng.choice(10**6 if trial % 2 else 2**40, n, replace=False))  # int64 ids too
            buckets[(b, b)] = BucketItems(ids if ids.max() >= 2**31 else ids.astype(np.int32),
                                          rng.integers(1, 4, n).astype(np.int32))  # fmt: skip
        global_batch = int(rng.integers(1, 9))
        planned = plan_epoch(buckets, seed=trial, epoch=1, global_batch=global_batch)
        expected = plan_by_definition(buckets, seed=trial, epoch=1, global_batch=global_batch)
        assert planned.shape == expected.shape and np.array_equal(planned, expected), trial


def test_ids_and_subsets_come_from_the_bucket_index_alone(tmp_path):
    path = tmp_path / "index.sqlite"
    with DatasetIndex(path) as index:
        twice = index.upsert_subset("2_twice", repeats=2)
        index.write_items([IndexItem(path=f"/i/{i}.png", subset_id=twice if i % 3 == 0 else 0, bucket_width=64,
                                     bucket_height=64 + 8 * (i % 2)) for i in range(30)])  # fmt: skip
    with sqlite3.connect(path) as db:  # as an index written before this change had it
        db.execute("DROP INDEX items_by_bucket")
        db.execute("CREATE INDEX items_by_bucket ON items (status, split, bucket_width, bucket_height, id)")
    DatasetIndex(path).close()  # opened for writing (as prepare does): the index is rebuilt with subset_id
    with DatasetIndex.open_existing(path) as index:
        plan = index.db.execute("EXPLAIN QUERY PLAN SELECT id, subset_id FROM items WHERE status = 'ok' AND "
                                "split = 'train' AND bucket_width = 64 AND bucket_height = 72 ORDER BY id").fetchall()  # fmt: skip
        assert "COVERING INDEX items_by_bucket" in plan[0][-1]
        buckets = read_bucket_items(index)
    odd = buckets[(64, 72)]
    assert odd.ids.tolist() == list(range(2, 31, 2)) and odd.ids.dtype == np.int32
    assert odd.repeats.tolist() == [2 if (i - 1) % 3 == 0 else 1 for i in range(2, 31, 2)]
