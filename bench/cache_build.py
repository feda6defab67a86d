"""What the latent cache's bookkeeping costs on top of the encoding itself, measured side by side in one run
(tiny VAE, small noise images, CPU):

  encode only      decode + resize/crop + VAE encode every item, in the same batches, writing nothing
  cache build      build_latent_cache: the same work + safetensors shards written atomically + SQLite catalogue
  cache re-run     everything already cached: only the catalogue lookups
  verify           re-read every shard, check size, digest and tensor names

Prints seconds and the ratios build / encode-only and re-run / build.
Run: .venv/bin/python bench/cache_build.py [--items 240] [--shard-items 32]"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import groupby
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from tiny_dataset import make_dataset  # noqa: E402

from tunelab.data.cache import build_latent_cache, encode_latents, verify_caches  # noqa: E402
from tunelab.data.index import DatasetIndex  # noqa: E402
from tunelab.models.tiny import tiny_vae  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=240)
    parser.add_argument("--shard-items", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    with tempfile.TemporaryDirectory() as tmp:
        config = make_dataset(Path(tmp), args.items, cache={"shard_items": args.shard_items, "batch_size": 8})
        with DatasetIndex(config.index) as index:
            items = [it for b in index.bucket_counts(None) for it in index.iter_items(split=None, bucket=b)]
            t = time.perf_counter()
            for _, same in groupby(items, key=lambda it: it.bucket):
                same = list(same)
                for start in range(0, len(same), 8):
                    encode_latents(vae, same[start : start + 8], torch.float32)
            encode_only = time.perf_counter() - t

            t = time.perf_counter()
            stats = build_latent_cache(index, vae, config.cache, progress=False)
            build = time.perf_counter() - t
            t = time.perf_counter()
            build_latent_cache(index, vae, config.cache, progress=False)
            rerun = time.perf_counter() - t
        t = time.perf_counter()
        report = verify_caches(config.cache)
        verify = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (config.cache.dir / "latents").glob("shard-*"))
    print(f"{args.items} items, {stats.shards_written} shards of ≤{args.shard_items}, {size / 2**10:.0f} KiB")
    print(f"encode only   {encode_only:6.2f} s")
    print(f"cache build   {build:6.2f} s   ratio build / encode-only = {build / encode_only:.2f}")
    print(f"cache re-run  {rerun:6.2f} s   ratio re-run / build = {rerun / build:.3f}")
    print(f"verify        {verify:6.2f} s   problems: {sum(len(p) for p in report.values())}")


if __name__ == "__main__":
    main()
