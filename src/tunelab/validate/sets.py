"""Validation sets: items with fixed latents, caption and size conditioning, each with a stable key.

The key (content hash, file name, or retention prompt + seed) seeds the item's noise and timesteps, so an item gets
the same draws in every run, whatever else is in the set. Latents are encoded once per run (the VAE is frozen)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tunelab.data.buckets import Placement, place_in_bucket
from tunelab.data.config import DataConfig, FolderSource
from tunelab.data.images import load_rgb
from tunelab.data.index import VALIDATION, DatasetIndex, IndexItem
from tunelab.data.sources import iter_folder
from tunelab.errors import fail
from tunelab.models.components import ModelComponents


@dataclass
class ValidationItem:
    key: str
    latents: torch.Tensor  # [4, h, w], unscaled (as the latent cache stores them)
    caption: str
    original_size: tuple[int, int]  # (h, w), SDXL size conditioning
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]


@dataclass
class ValidationSet:
    name: str  # held_out | retention | folder: the TensorBoard tag is val/<name>/...
    items: list[ValidationItem]


def native_size(components: ModelComponents) -> int:
    """The UNet's training size in pixels (its sample size × the VAE's downsampling factor)."""
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    return int(components.unet.config.sample_size) * factor


def placed_pixels(image: Image.Image, placement: Placement) -> torch.Tensor:
    """The training view of an image: resized to cover its bucket, cropped → [3, H, W] in [-1, 1]."""
    image = image.resize((placement.resize_width, placement.resize_height), resample=3)  # bicubic
    left, top = placement.crop_left, placement.crop_top
    image = image.crop((left, top, left + placement.bucket_width, top + placement.bucket_height))
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


@torch.no_grad()
def encode_one(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (posterior mean) of one image."""
    pixels = pixels[None].to(vae.device, vae.dtype)
    return vae.encode(pixels).latent_dist.mean[0].float().cpu()


def item_caption(item: IndexItem) -> str:
    """Caption and tags as sd-scripts joins them; no shuffling or dropout: validation must not vary."""
    return ", ".join(text for text in (item.caption, item.tags) if text)


def held_out_set(components: ModelComponents, data: DataConfig, max_items: int | None, progress: bool = True) -> ValidationSet:
    """The index's validation split, first `max_items` by id, at each item's bucket size and crop."""
    index_path = Path(data.index)
    if not index_path.exists():
        raise fail(index_path, "dataset index not found (run `tunelab prepare` first)")
    with DatasetIndex.open_existing(index_path) as index:
        rows = []
        for row in index.iter_items(split=VALIDATION):
            rows.append(row)
            if max_items is not None and len(rows) >= max_items:
                break
    items = []
    for row in tqdm(rows, desc="held-out latents", unit="img", disable=not progress or not rows):
        placement = Placement(row.bucket_width, row.bucket_height, row.resize_width, row.resize_height,
                              row.crop_left, row.crop_top)
        items.append(ValidationItem(key=f"held_out:{row.content_hash or row.path}",
                                    latents=encode_one(components.vae, placed_pixels(load_rgb(row.path), placement)),
                                    caption=item_caption(row), original_size=row.original_size_hw,
                                    crop_top_left=row.crop_top_left, target_size=row.target_size_hw))
    return ValidationSet("held_out", items)


def folder_set(components: ModelComponents, folder: Path, size: int, progress: bool = True) -> ValidationSet:
    """Images under `folder` with `.txt` (tags) / `.caption` sidecars, centre-cropped to size × size."""
    items = []
    candidates = list(iter_folder(FolderSource(type="folder", path=folder)))
    for candidate in tqdm(candidates, desc="folder latents", unit="img", disable=not progress):
        image = load_rgb(candidate.path)
        placement = place_in_bucket(image.width, image.height, (size, size))
        caption = ", ".join(t for t in (candidate.text.caption, candidate.text.tags) if t)
        items.append(ValidationItem(key=f"folder:{candidate.path.relative_to(folder).as_posix()}",
                                    latents=encode_one(components.vae, placed_pixels(image, placement)),
                                    caption=caption, original_size=(image.height, image.width),
                                    crop_top_left=(placement.crop_top, placement.crop_left), target_size=(size, size)))
    if not items:
        raise fail(folder, "validation folder has no images")
    return ValidationSet("folder", items)
