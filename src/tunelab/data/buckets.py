"""Area-preserving aspect-ratio buckets (SDXL style) and the resize + crop that puts an image into its bucket.

Every bucket has sides that are multiples of `step`, lies within [min_side, max_side], and has the largest area
not above resolution² for its width (so the area is within one step of the target). An image goes to the bucket
with the nearest aspect ratio (compared in log space, so 2:1 and 1:2 are equally far from 1:1), is scaled to cover
it, and is centre-cropped; the crop offset is recorded for SDXL's crop conditioning.

The target area is resolution² or width × height; the square bucket is the largest multiple of `step` within it
(sd-scripts' rule). With `upscale = false` (sd-scripts' `bucket_no_upscale`) there is no bucket table: an image
larger than the area is shrunk to it, and its bucket is its own size rounded down to `step` (min/max sides unused)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

from tunelab.data.config import BucketConfig


@dataclass(frozen=True, slots=True)
class Placement:
    """How one image becomes one training sample: resize to (resize_width, resize_height), crop at (left, top)."""

    bucket_width: int
    bucket_height: int
    resize_width: int
    resize_height: int
    crop_left: int
    crop_top: int


def make_buckets(config: BucketConfig) -> tuple[tuple[int, int], ...]:
    """All (width, height) buckets for `config`, sorted by aspect ratio (w/h)."""
    return _table(config)[0]


def _table(config: BucketConfig):
    width, height = config.size
    return _bucket_table(width * height, config.step, config.min_side, config.max_side, config.max_aspect)


@lru_cache(maxsize=16)
def _bucket_table(area: int, step: int, min_side: int, max_side: int, max_aspect: float):
    square = math.isqrt(area) // step * step
    buckets = {(square, square)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (area // width) // step * step)
        if height < min_side or max(width, height) / min(width, height) > max_aspect + 1e-9:
            continue
        buckets.add((width, height))
        buckets.add((height, width))
    ordered = tuple(sorted(buckets, key=lambda wh: (wh[0] / wh[1], wh[0])))
    return ordered, _boundaries(ordered)


@lru_cache(maxsize=16)
def _boundaries(buckets: tuple[tuple[int, int], ...]) -> tuple[float, ...]:
    """Aspect ratios halfway (geometrically, i.e. in log space) between neighbouring buckets."""
    ratios = [w / h for w, h in buckets]
    return tuple(math.sqrt(a * b) for a, b in zip(ratios, ratios[1:]))


def nearest_bucket(width: int, height: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's in log space, so 2:1 and 1:2 are equally far
    from 1:1 (`buckets` sorted by ratio, as `make_buckets` returns them)."""
    return buckets[bisect.bisect_left(_boundaries(buckets), width / height)]


def place_in_bucket(width: int, height: int, bucket: tuple[int, int]) -> Placement:
    """Scale (keeping aspect) so the image covers the bucket, then centre-crop the overflow."""
    bucket_width, bucket_height = bucket
    scale = max(bucket_width / width, bucket_height / height)
    resize_width = max(bucket_width, round(width * scale))
    resize_height = max(bucket_height, round(height * scale))
    return Placement(
        bucket_width, bucket_height, resize_width, resize_height,
        crop_left=(resize_width - bucket_width) // 2, crop_top=(resize_height - bucket_height) // 2,
    )  # fmt: skip


def assign_bucket(width: int, height: int, config: BucketConfig) -> Placement:
    """Bucket + resize + crop for an image of this size; with buckets disabled, everything is the resolution."""
    if not config.enabled:
        return place_in_bucket(width, height, config.size)
    if not config.upscale:
        return _own_size_bucket(width, height, config)
    buckets, boundaries = _table(config)
    return place_in_bucket(width, height, buckets[bisect.bisect_left(boundaries, width / height)])


def _own_size_bucket(width: int, height: int, config: BucketConfig) -> Placement:
    """`upscale = false`: shrink to the target area if larger, then crop to multiples of `step`."""
    step = config.step
    resize_width, resize_height = _shrink_to_area(width, height, config.size[0] * config.size[1], step)
    bucket = (max(step, resize_width - resize_width % step), max(step, resize_height - resize_height % step))
    if resize_width < bucket[0] or resize_height < bucket[1]:  # a side under one step: the one case that upscales
        return place_in_bucket(width, height, bucket)
    return Placement(*bucket, resize_width, resize_height, (resize_width - bucket[0]) // 2, (resize_height - bucket[1]) // 2)


def _shrink_to_area(width: int, height: int, area: int, step: int) -> tuple[int, int]:
    """The size an image larger than `area` is shrunk to (sd-scripts' rule): round the area-filling width, or
    height, to the step grid, derive the other side from the aspect ratio, and keep whichever is truer to it."""
    if width * height <= area:
        return width, height
    aspect = width / height

    def to_step(x: float) -> int:
        return max(step, int(x + 0.5) // step * step)

    by_width = to_step(math.sqrt(area * aspect))
    by_height = to_step(area / math.sqrt(area * aspect))
    error_by_width = abs(by_width / to_step(by_width / aspect) - aspect)
    error_by_height = abs(to_step(by_height * aspect) / by_height - aspect)
    if error_by_width < error_by_height:
        return by_width, int(by_width / aspect + 0.5)
    return int(by_height * aspect + 0.5), by_height
