"""An index item → its training pixels: decode (as prepare accepted it), resize, crop to the bucket, scale to [-1, 1].

The resize and crop are the ones `prepare` recorded in the index, so the SDXL size/crop conditioning of the batch
(original_size, crop_top_left, target_size) describes exactly these pixels. The latent cache and the loader both
use this one function, so cached latents and decoded pixels see the same image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tunelab.data.images import load_rgb
from tunelab.data.index import IndexItem
from tunelab.errors import fail


def item_pixels(item: IndexItem) -> torch.Tensor:
    """[3, bucket_height, bucket_width] float32 in [-1, 1]. An image gone or broken since `prepare` is one clear
    error (the index is out of date), not a decoder traceback."""
    try:
        image = load_rgb(item.path)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors are OSError / SyntaxError / ValueError
        raise fail(item.path, f"cannot read the image any more ({type(e).__name__}); run `tunelab prepare` again") from None
    if image.size != (item.resize_width, item.resize_height):
        # Lanczos when shrinking (no aliasing), bicubic when enlarging.
        shrinking = item.resize_width < image.width
        image = image.resize((item.resize_width, item.resize_height), Image.LANCZOS if shrinking else Image.BICUBIC)
    box = (item.crop_left, item.crop_top, item.crop_left + item.bucket_width, item.crop_top + item.bucket_height)
    image = image.crop(box)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    return pixels / 127.5 - 1.0


def size_conditioning(items: list[IndexItem]) -> dict[str, torch.Tensor]:
    """SDXL micro-conditioning per item as LongTensors [B, 2] in (h, w) order."""
    return {
        "original_size": torch.tensor([it.original_size_hw for it in items], dtype=torch.long),
        "crop_top_left": torch.tensor([it.crop_top_left for it in items], dtype=torch.long),
        "target_size": torch.tensor([it.target_size_hw for it in items], dtype=torch.long),
    }
