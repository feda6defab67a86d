"""A million items of metadata two ways, each in its own child process so the peak RSS of each is its own:

  index build   stream an sd-scripts-style `meta_lat.json` entry by entry (tunelab.data.sources.iter_json_object),
                bucket + split each item and write rows to the SQLite index in batches, as `prepare` does
  index read    open that index and walk every train item in id order (what a loader needs), plus bucket counts
  json.load     the sd-scripts route: json.load the same file into one dict

Prints seconds and peak RSS (ru_maxrss of each child) for each, and the ratios. Targets for the index build:
≤ 60 s, ≤ 300 MB peak RSS, ≥ 10× less RAM than json.load. Image decoding is not part of this benchmark.

Run: .venv/bin/python bench/index_scale.py [--items 1000000] [--workdir DIR] [--keep]"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = [f"tag_{i}" for i in range(5000)] + ["1girl", "solo", "long hair", "smile", "looking at viewer", "blue eyes"]


def write_metadata(path: Path, items: int, seed: int = 0) -> None:
    """{key: {"caption", "tags", "train_resolution"}} with booru-like sizes (~25 tags, one sentence of caption)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        out.write("{\n")
        for i in range(items):
            entry = {
                "caption": f"an illustration of a character number {i} standing in a bright room, detailed",
                "tags": ", ".join(rng.sample(VOCAB, 25)),
                "train_resolution": [rng.randrange(512, 4096), rng.randrange(512, 4096)],  # few sizes repeat
            }
            out.write(f'  "images/{i // 1000:04d}/{i:08d}": {json.dumps(entry)}' + (",\n" if i + 1 < items else "\n"))
        out.write("}\n")


def child_index_build(meta: Path, db: Path) -> dict:
    """What prepare writes per item, from metadata alone: path, text, size, bucket/resize/crop, split, status."""
    import hashlib

    from tunelab.data.buckets import assign_bucket
    from tunelab.data.config import BucketConfig, SplitConfig
    from tunelab.data.index import DatasetIndex, IndexItem
    from tunelab.data.prepare import split_of
    from tunelab.data.sources import iter_json_object

    buckets, split = BucketConfig(), SplitConfig(validation_fraction=0.02)

    def rows():
        for key, entry in iter_json_object(meta):
            width, height = entry["train_resolution"]
            content_hash = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()  # stands in for the file's hash
            p = assign_bucket(width, height, buckets)
            yield IndexItem(
                path=key, content_hash=content_hash, width=width, height=height,
                bucket_width=p.bucket_width, bucket_height=p.bucket_height, resize_width=p.resize_width,
                resize_height=p.resize_height, crop_left=p.crop_left, crop_top=p.crop_top,
                tags=entry.get("tags"), caption=entry.get("caption"), split=split_of(key, content_hash, split),
            )  # fmt: skip

    with DatasetIndex(db) as index:
        written = index.write_items(rows(), batch_rows=5000)
        index.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"items": written}


def child_index_read(db: Path) -> dict:
    from tunelab.data.index import DatasetIndex

    with DatasetIndex.open_existing(db) as index:
        walked = sum(1 for _ in index.iter_items(split="train"))
        ids = sum(len(index.item_ids(bucket=b)) for b in index.bucket_counts())
    return {"items": walked, "ids_by_bucket": ids}


def child_json_load(meta: Path) -> dict:
    with open(meta, encoding="utf-8") as f:
        metadata = json.load(f)
    return {"items": len(metadata)}


def run_child(route: str, *args: str) -> dict:
    """Run one route in a fresh interpreter; it reports its own wall time and peak RSS (ru_maxrss, kB on Linux)."""
    out = subprocess.run([sys.executable, __file__, "--child", route, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(route: str, args: list[str]) -> None:
    started, cpu_started = time.perf_counter(), time.process_time()
    if route == "index-build":
        result = child_index_build(Path(args[0]), Path(args[1]))
    elif route == "index-read":
        result = child_index_read(Path(args[0]))
    else:
        result = child_json_load(Path(args[0]))
    result["seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time() - cpu_started  # the machine may be shared: CPU time shows the work
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="Keep the generated files.")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    known, rest = parser.parse_known_args()
    if known.child:
        return child_main(known.child, rest)

    workdir = known.workdir or Path(tempfile.mkdtemp(prefix="index_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    meta, db = workdir / "meta_lat.json", workdir / "index.sqlite"
    for stale in workdir.glob("index.sqlite*"):
        stale.unlink()
    started = time.perf_counter()
    write_metadata(meta, known.items)
    print(f"{known.items:,} items (random sizes, 25 tags + 1 sentence each); meta_lat.json {meta.stat().st_size / 2**20:.0f} MB written in {time.perf_counter() - started:.1f} s")

    (workdir / "empty.json").write_text("{}")
    baseline = run_child("json-load", str(workdir / "empty.json"))  # the bare interpreter, for reference
    build = run_child("index-build", str(meta), str(db))
    read = run_child("index-read", str(db))
    loaded = run_child("json-load", str(meta))
    assert build["items"] == loaded["items"] == known.items, (build, loaded)

    db_mb = sum(p.stat().st_size for p in workdir.glob("index.sqlite*")) / 2**20
    print(f"{'route':<14} {'items':>10} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for name, r in (("(interpreter)", baseline), ("index build", build), ("index read", read), ("json.load", loaded)):
        print(f"{name:<14} {r['items']:>10,} {r['seconds']:>8.2f} {r['cpu_seconds']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    print(f"index file: {db_mb:.0f} MB")
    ram_ratio = loaded["peak_rss_mb"] / build["peak_rss_mb"]
    print(f"ratios: json.load peak RSS / index build peak RSS = {ram_ratio:.1f}x; "
          f"json.load peak RSS / index read peak RSS = {loaded['peak_rss_mb'] / read['peak_rss_mb']:.1f}x; "
          f"index build time / json.load time = {build['seconds'] / loaded['seconds']:.2f}x")  # fmt: skip
    checks = [("index build <= 60 s", build["seconds"] <= 60), ("index build peak <= 300 MB", build["peak_rss_mb"] <= 300),
              (">= 10x less RAM than json.load", ram_ratio >= 10)]  # fmt: skip
    print("targets: " + "; ".join(f"{name}: {'PASS' if ok else 'MISS'}" for name, ok in checks))
    if not known.keep and known.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
