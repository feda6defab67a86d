"""A small real dataset for cache / loader tests: noise images in three aspect buckets with tag sidecars,
prepared into a real SQLite index by `prepare_dataset`."""

from __future__ import annotations

from pathlib import Path

from make_images import write_image
from tunelab.data.config import DataConfig
from tunelab.data.prepare import prepare_dataset

SIZES = [(32, 32), (48, 24), (24, 48)]  # → buckets 32×32, 40×24-ish, 24×40-ish at resolution 32


def make_dataset(root: Path, n: int = 24, *, captions: dict | None = None, cache: dict | None = None,
                 repeat_folder: str | None = None, tags_of=lambda i: f"tag{i}, common, shape{i % 3}") -> DataConfig:  # fmt: skip
    """`n` images (sizes cycling through SIZES) under root/images, prepared; returns the resolved DataConfig."""
    images = root / "images"
    for i in range(n):
        folder = images / repeat_folder if (repeat_folder and i % 2) else images
        w, h = SIZES[i % len(SIZES)]
        path = write_image(folder / f"img{i:03d}.png", w, h, seed=i)
        path.with_suffix(".txt").write_text(tags_of(i))
    config = DataConfig.model_validate({
        "index": "index.sqlite",
        "sources": [{"type": "folder", "path": "images"}],
        "buckets": {"resolution": 32, "step": 8, "min_side": 16, "max_side": 64},
        "images": {"min_side": 16},
        "captions": captions or {},
        "cache": {"shard_items": 5, "batch_size": 4, **(cache or {})},
    }).resolved(root)  # fmt: skip
    prepare_dataset(config, progress=False)
    return config
