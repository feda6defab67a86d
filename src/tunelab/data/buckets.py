"""Area-preserving aspect-ratio buckets (SDXL style) and the resize + crop that puts an image into its bucket.

Every bucket has sides that are multiples of `step`, lies within [min_side, max_side], and has the largest area
not above resolution² for its width (so the area is within one step of the target). An image goes to the bucket
with the nearest aspect ratio (compared in log space, so 2:1 and 1:2 are equally far from 1:1), is scaled to cover
it, and is centre-cropped; the crop offset is recorded for SDXL's crop conditioning."""

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
    return _bucket_table(config.resolution, config.step, config.min_side, config.max_side, config.max_aspect)[0]


@lru_cache(maxsize=16)
def _bucket_table(resolution: int, step: int, min_side: int, max_side: int, max_aspect: float):
    area = resolution * resolution
    buckets = {(resolution, resolution)}
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
    """Bucket + resize + crop for an image of this size; with buckets disabled, everything is resolution²."""
    if not config.enabled:
        return place_in_bucket(width, height, (config.resolution, config.resolution))
    buckets, boundaries = _bucket_table(config.resolution, config.step, config.min_side, config.max_side, config.max_aspect)
    return place_in_bucket(width, height, buckets[bisect.bisect_left(boundaries, width / height)])
