"""`prepare` throughput on real-size images: how it scales with `workers` (processes that read, hash and fully
decode each image), and what that projects to for the practitioner's 12.4M images on a 64-core machine.

  generate   N JPEGs around 1 megapixel (1024x1024, 896x1152, 1216x832; smooth colour fields + grain, quality 90:
             a few hundred kB each, like photos / illustrations), once (reused with --workdir)
  prepare    prepare_dataset into a fresh index with workers = 1 and 2 (or --workers), alternated, --rounds times
             each; the files are in the page cache for every run (the disk is not what is measured)

Prints images/s per run, the median (min-max, n) per worker count and the speedup over 1 worker; and, because a
shared machine's wall times say more about its load than about prepare (the load average is printed), the CPU
time per image: of the workers (read, hash, decode: this part scales with cores) and of the main process (walking
the folders, the index writes: one process, the ceiling). The projection for 12.4M images at 64 cores comes from
those CPU costs (a projection, not a measurement; a shared disk may cap it first).

Run: .venv/bin/python bench/prepare_scale.py [--images 1000] [--rounds 2] [--workers 1 2] [--workdir DIR]"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

SIZES = [(1024, 1024), (896, 1152), (1216, 832)]
TARGET_IMAGES = 12_400_000
TARGET_CORES = 64


def generate(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in tqdm(range(count), desc="generate", unit="img"):
        path = folder / f"{i:05d}.jpg"
        if path.exists():
            continue
        w, h = SIZES[i % len(SIZES)]
        coarse = rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(path, quality=90)
        path.with_suffix(".txt").write_text(f"tag_{i % 50}, tag_{i % 7}, solo")


def prepare_once(images: Path, workdir: Path, workers: int) -> tuple[float, float, float]:
    """(images per second, CPU seconds per image of the main process, of its worker processes) of one prepare into
    a new index."""
    from tunelab.data.config import DataConfig
    from tunelab.data.prepare import prepare_dataset

    index = workdir / f"index-{workers}.sqlite"
    for stale in workdir.glob(index.name + "*"):
        stale.unlink()
    config = DataConfig.model_validate({"index": str(index), "sources": [{"type": "folder", "path": str(images)}],
                                        "workers": workers})  # fmt: skip
    started, cpu = time.perf_counter(), os.times()
    stats = prepare_dataset(config, progress=False)
    seconds, after = time.perf_counter() - started, os.times()  # workers are joined: their CPU time is counted
    assert stats.images_read == stats.items and stats.ok == stats.items, stats.summary()
    main = (after.user + after.system - cpu.user - cpu.system) / stats.items
    children = (after.children_user + after.children_system - cpu.children_user - cpu.children_system) / stats.items
    return stats.items / seconds, main, max(0.0, children)  # clock ticks: -0.0 with no worker process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) the generated images here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="prepare_scale_"))
    images = workdir / "images"
    generate(images, args.images)
    for extra in sorted(images.glob("*.jpg"))[args.images :]:
        extra.unlink()
        extra.with_suffix(".txt").unlink(missing_ok=True)
    size = sum(p.stat().st_size for p in images.glob("*.jpg")) / args.images
    for path in images.iterdir():  # into the page cache: every run reads from memory alike
        path.read_bytes()
    print(f"{args.images} JPEGs, {size / 1024:.0f} kB on average; {os.cpu_count()} CPUs; "
          f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    cpu: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
    for round_ in range(args.rounds):
        for workers in args.workers if round_ % 2 == 0 else reversed(args.workers):  # alternate the order
            rate, main, children = prepare_once(images, workdir, workers)
            rates[workers].append(rate)
            cpu[workers].append((main, children))
            print(f"round {round_ + 1}  workers={workers}: {rate:6.1f} images/s   CPU per image: main process "
                  f"{main * 1000:5.1f} ms, workers {children * 1000:5.1f} ms")  # fmt: skip
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    base = statistics.median(rates[args.workers[0]]) / args.workers[0]  # per worker at the smallest count
    for workers, values in rates.items():
        median = statistics.median(values)
        print(f"workers={workers}: median {median:.1f} images/s (min {min(values):.1f}, max {max(values):.1f}, "
              f"n={len(values)}); speedup over {args.workers[0]} worker(s) x{median / base / args.workers[0]:.2f}")  # fmt: skip
    top = max(args.workers)
    if top > 1:  # the pooled runs: the main process walks and writes, the workers read, hash and decode
        main = statistics.median(m for m, _ in cpu[top])
        work = statistics.median(c for _, c in cpu[top])
        scaled = TARGET_CORES / work  # images/s if the decoding part scales with cores
        ceiling = 1 / main  # images/s the one main process can index
        projected = min(scaled, ceiling)
        print(f"projection at {TARGET_CORES} cores (CPU costs at workers={top}): workers {work * 1000:.1f} ms/image -> "
              f"{scaled:.0f} images/s; main process {main * 1000:.1f} ms/image -> ceiling {ceiling:.0f} images/s; "
              f"{TARGET_IMAGES:,} images in {TARGET_IMAGES / projected / 3600:.1f} h "
              f"({'main process' if ceiling < scaled else 'decoding'} bound)")  # fmt: skip
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
