"""Validation sets: items with fixed latents, caption and size conditioning, each with a stable key.

The key (content hash, file name, or retention prompt + seed) seeds the item's noise and timesteps, so an item gets
the same draws in every run, whatever else is in the set. Latents are encoded once per run (the VAE is frozen)."""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tunelab.data.buckets import place_in_bucket
from tunelab.data.captions import CaptionPolicy
from tunelab.data.config import DataConfig, FolderSource
from tunelab.data.images import load_rgb
from tunelab.data.index import VALIDATION, DatasetIndex, IndexItem
from tunelab.data.pixels import item_pixels
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


@torch.no_grad()
def encode_one(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (posterior mean) of one image."""
    pixels = pixels[None].to(vae.device, vae.dtype)
    return vae.encode(pixels).latent_dist.mean[0].float().cpu()


def validation_captions(data: DataConfig) -> CaptionPolicy:
    """The run's caption policy without its randomness (no shuffle, tag or caption dropout, wildcards fixed):
    a held-out item always gets the same prompt, the one training would give it when nothing is dropped."""
    fixed = data.captions.model_copy(update={"shuffle_caption": False, "caption_tag_dropout_rate": 0.0,
                                             "caption_dropout_rate": 0.0, "caption_dropout_every_n_epochs": 0})
    return CaptionPolicy.from_config(fixed)


def held_out_set(components: ModelComponents, data: DataConfig, max_items: int | None, progress: bool = True) -> ValidationSet:
    """The index's validation split, first `max_items` by id, at each item's bucket size and crop."""
    index_path = Path(data.index)
    if not index_path.exists():
        raise fail(index_path, "dataset index not found (run `tunelab prepare` first)")
    with DatasetIndex.open_existing(index_path) as index:
        rows = list(itertools.islice(index.iter_items(split=VALIDATION), max_items))
    policy = validation_captions(data)
    items = []
    for row in tqdm(rows, desc="held-out latents", unit="img", disable=not progress or not rows):
        items.append(ValidationItem(key=f"held_out:{row.content_hash or row.path}",
                                    latents=encode_one(components.vae, item_pixels(row)),
                                    caption=policy(row, random.Random(f"validation:{row.path}")),
                                    original_size=row.original_size_hw, crop_top_left=row.crop_top_left,
                                    target_size=row.target_size_hw))
    return ValidationSet("held_out", items)


def folder_set(components: ModelComponents, folder: Path, size: int, progress: bool = True) -> ValidationSet:
    """Images under `folder` with `.txt` (tags) / `.caption` sidecars, centre-cropped to size × size."""
    items = []
    candidates = list(iter_folder(FolderSource(type="folder", path=folder)))
    for candidate in tqdm(candidates, desc="folder latents", unit="img", disable=not progress):
        width, height = load_rgb(candidate.path).size
        placement = place_in_bucket(width, height, (size, size))
        # the loader's resize + crop, through an index row describing this placement
        row = IndexItem(path=str(candidate.path), width=width, height=height, tags=candidate.text.tags,
                        caption=candidate.text.caption, **asdict(placement))
        caption = ", ".join(t for t in (candidate.text.tags, candidate.text.caption) if t)
        items.append(ValidationItem(key=f"folder:{candidate.path.relative_to(folder).as_posix()}",
                                    latents=encode_one(components.vae, item_pixels(row)),
                                    caption=caption, original_size=(height, width),
                                    crop_top_left=(placement.crop_top, placement.crop_left), target_size=(size, size)))
    if not items:
        raise fail(folder, "validation folder has no images")
    return ValidationSet("folder", items)
