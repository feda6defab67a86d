"""The loader's bookkeeping at the practitioner's scale (metadata only, no images): per-process memory and start-up
time to open the index, plan an epoch and resume in the middle of one, for world size 1 and N.

  build      write N synthetic items (7 buckets, 2 subsets: one with repeats = 3, booru-like tags) into a SQLite
             index, in large executemany transactions with the bucket index built afterwards (reused with --index)
  open       DatasetBatches(...) for one rank: ids + repeats per bucket (once per run)
  plan       plan_epoch: shuffle within buckets, cut into global batches, shuffle batches
  resume     start at the middle global batch: plan again + this rank's rows and captions of that batch
  open+plan  what a rank pays before its first step (the target: <= 60 s, and peak RSS <= 1 GB per process)

Every rank runs in its own child process (peak RSS = ru_maxrss of that process, imports included), `--parallel`
at a time. World size 1 runs with the same global batch (batch size x N), and its middle global batch must equal
the N ranks' slices of theirs put together: the same global batches whatever the world size.

Run: .venv/bin/python bench/loader_scale.py --items 12400000 --world-size 8 --index DIR/index.sqlite"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

BUCKETS = [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768)]
TAG_STRINGS = 4096  # distinct tag lists to draw from (generating 25 random tags for each of 12M rows is slow)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(path: Path, items: int) -> None:
    """Items in bulk: the bucket index is dropped while rows go in and built once at the end (10x faster)."""
    import random

    from tunelab.data.index import DatasetIndex

    with DatasetIndex(path) as index:
        main, extra = index.upsert_subset("main", repeats=1), index.upsert_subset("3_extra", repeats=3)
    rng = random.Random(0)
    vocab = [f"tag_{i}" for i in range(5000)]
    tag_lists = [", ".join(rng.sample(vocab, 25)) for _ in range(TAG_STRINGS)]
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=OFF")  # a benchmark file: rebuilt if a crash leaves it short
    db.execute("DROP INDEX IF EXISTS items_by_bucket")
    sql = ("INSERT INTO items (path, subset_id, content_hash, width, height, bucket_width, bucket_height, "
           "resize_width, resize_height, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")  # fmt: skip
    step = 200_000
    for start in tqdm(range(0, items, step), desc="build index", unit_scale=step):
        rows = []
        for i in range(start, min(items, start + step)):
            w, h = BUCKETS[i % len(BUCKETS)]
            rows.append((f"/images/{i // 10000:04d}/{i:08d}.png", extra if i % 10 == 0 else main, f"{i:032x}",
                         w, h, w, h, w, h, tag_lists[(i * 2654435761) % TAG_STRINGS]))  # fmt: skip
        with db:
            db.executemany(sql, rows)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('bench_items', ?)", (str(items),))
    db.commit()
    db.close()
    DatasetIndex(path).close()  # builds the bucket index as the schema defines it


def built_items(path: Path) -> int | None:
    if not path.exists():
        return None
    with sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'bench_items'").fetchone()
    return int(row[0]) if row else None


def child(index_path: str, rank: int, world_size: int, batch_size: int) -> dict:
    """One rank's start-up, timed stage by stage."""
    started, cpu_started = time.perf_counter(), time.process_time()
    from tunelab.data.config import DataConfig
    from tunelab.data.index import DatasetIndex
    from tunelab.data.loader import DatasetBatches, plan_epoch

    out = {"rank": rank, "imports_s": time.perf_counter() - started, "imports_rss_mb": peak_mb()}
    config = DataConfig.model_validate({"index": index_path, "sources": [{"type": "folder", "path": "."}],
                                        "captions": {"shuffle_caption": True, "keep_tokens": 1,
                                                     "caption_tag_dropout_rate": 0.1}})  # fmt: skip
    t = time.perf_counter()
    index = DatasetIndex.open_existing(index_path)
    source = DatasetBatches(index, config, batch_size=batch_size, seed=0, rank=rank, world_size=world_size)
    out["open_s"] = time.perf_counter() - t
    out["open_cpu_s"] = time.process_time() - cpu_started  # the machine may be shared: CPU time shows the work
    t = time.perf_counter()
    plan = plan_epoch(source.buckets, seed=0, epoch=0, global_batch=source.global_batch)
    out["plan_s"] = time.perf_counter() - t
    out["open_plan_cpu_s"] = time.process_time() - cpu_started
    out["batches"] = len(plan)
    del plan
    t = time.perf_counter()
    middle = out["batches"] // 2
    ids, occurrences = source.batch_ids(epoch=1, batch=middle)
    items = index.get_many(ids)
    [source.policies.prompt(it, seed=0, epoch=1, occurrence=o) for it, o in zip(items, occurrences)]
    out["resume_s"] = time.perf_counter() - t
    out["middle_ids"] = ids
    out["peak_rss_mb"] = peak_mb()
    index.close()
    return out


def run_ranks(args, world_size: int, batch_size: int) -> list[dict]:
    """Each rank in its own interpreter, `--parallel` at a time."""
    results, ranks = [], list(range(world_size))
    while ranks:
        wave, ranks = ranks[: args.parallel], ranks[args.parallel :]
        procs = [subprocess.Popen([sys.executable, __file__, "--child", str(args.index), str(r), str(world_size),
                                   str(batch_size)], stdout=subprocess.PIPE, text=True) for r in wave]  # fmt: skip
        for p in procs:
            output, _ = p.communicate()
            if p.returncode:
                raise SystemExit(f"rank child failed ({p.returncode})")
            results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2, help="ranks measured at once")
    parser.add_argument("--index", type=Path, default=None, help="reuse (or build once) this index file")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        index_path, rank, world_size, batch_size = args.child
        print(json.dumps(child(index_path, int(rank), int(world_size), int(batch_size))))
        return
    tmp = None
    if args.index is None:
        tmp = tempfile.TemporaryDirectory()
        args.index = Path(tmp.name) / "index.sqlite"
    if built_items(args.index) != args.items:
        for stale in args.index.parent.glob(args.index.name + "*"):
            stale.unlink()
        t = time.perf_counter()
        build(args.index, args.items)
        print(f"build {args.items:,} items: {time.perf_counter() - t:.0f} s, "
              f"{args.index.stat().st_size / 2**30:.1f} GiB")  # fmt: skip
    print(f"{args.items:,} items; global batch {args.batch_size * args.world_size}; ranks measured "
          f"{args.parallel} at a time; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    header = (f"{'world':>5} {'rank':>4} {'imports s':>9} {'open s':>7} {'plan s':>7} {'open+plan s':>11} "
              f"{'CPU s*':>7} {'resume s':>8} {'peak RSS MB':>11}")  # fmt: skip
    print(header)
    runs = {1: run_ranks(args, 1, args.batch_size * args.world_size)}
    if args.world_size > 1:
        runs[args.world_size] = run_ranks(args, args.world_size, args.batch_size)
    for world, results in runs.items():
        for r in results:
            print(f"{world:>5} {r['rank']:>4} {r['imports_s']:>9.1f} {r['open_s']:>7.1f} {r['plan_s']:>7.1f} "
                  f"{r['open_s'] + r['plan_s']:>11.1f} {r['open_plan_cpu_s']:>7.1f} {r['resume_s']:>8.1f} "
                  f"{r['peak_rss_mb']:>11.0f}")  # fmt: skip
    everyone = [r for results in runs.values() for r in results]
    worst_rss = max(r["peak_rss_mb"] for r in everyone)
    worst_start = max(r["open_s"] + r["plan_s"] for r in everyone)
    same = [i for r in sorted(runs[args.world_size], key=lambda r: r["rank"]) for i in r["middle_ids"]] \
        == runs[1][0]["middle_ids"]  # fmt: skip
    print("CPU s*: CPU seconds of imports + open + plan (wall times grow with the machine's load)")
    print(f"batches per epoch: {runs[1][0]['batches']:,} (world 1) / {everyone[-1]['batches']:,} (world {args.world_size})")
    print(f"middle global batch identical at world 1 and {args.world_size}: {same}")
    print(f"targets: open+plan <= 60 s: {'PASS' if worst_start <= 60 else 'MISS'} (worst {worst_start:.1f} s); "
          f"peak RSS <= 1024 MB: {'PASS' if worst_rss <= 1024 else 'MISS'} (worst {worst_rss:.0f} MB)")  # fmt: skip
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
