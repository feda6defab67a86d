"""Aspect buckets: sides on the step grid within limits, area within one step of the target, crop recorded."""

import pytest
from pydantic import ValidationError

from tunelab.data.buckets import assign_bucket, make_buckets, nearest_bucket, place_in_bucket
from tunelab.data.config import BucketConfig

SDXL = BucketConfig()
TINY = BucketConfig(resolution=32, step=8, min_side=16, max_side=64)


@pytest.mark.parametrize("config", [SDXL, TINY, BucketConfig(resolution=768, step=32, min_side=384, max_side=1536, max_aspect=2.0)])
def test_every_bucket_is_on_the_grid_and_preserves_area_within_a_step(config):
    area, step = config.resolution**2, config.step
    buckets = make_buckets(config)
    assert (config.resolution, config.resolution) in buckets
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert config.min_side <= min(w, h) and max(w, h) <= config.max_side
        assert max(w, h) / min(w, h) <= config.max_aspect + 1e-9
        assert w * h <= area
        # no larger bucket of the same shape family fits: one more step on either side overshoots the area
        assert (w + step) * h > area or w * (h + step) > area
    assert {(h, w) for w, h in buckets} == set(buckets)  # portrait and landscape alike


def test_sdxl_buckets_include_the_known_sdxl_sizes():
    buckets = set(make_buckets(SDXL))
    assert {(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (1344, 768), (1536, 640)} <= buckets
    assert max(w / h for w, h in buckets) == 4.0


def test_nearest_bucket_is_closest_aspect_in_log_space():
    buckets = make_buckets(SDXL)
    assert nearest_bucket(1920, 1080, buckets) == (1344, 768)  # 16:9 = 1.78 → 1.75
    assert nearest_bucket(1080, 1920, buckets) == (768, 1344)
    assert nearest_bucket(500, 500, buckets) == (1024, 1024)
    assert nearest_bucket(100_000, 10, buckets) == (2048, 512)  # beyond max aspect → most extreme bucket
    assert nearest_bucket(30, 40, make_buckets(TINY)) == (24, 40)


@pytest.mark.parametrize("size", [(1920, 1080), (1000, 1500), (37, 41), (4000, 300), (1024, 1024)])
def test_placement_covers_the_bucket_and_records_a_centred_crop(size):
    width, height = size
    p = assign_bucket(width, height, SDXL)
    assert p.resize_width >= p.bucket_width and p.resize_height >= p.bucket_height
    # aspect kept (to rounding): one side matches the bucket exactly, the other overflows
    assert p.resize_width == p.bucket_width or p.resize_height == p.bucket_height
    assert abs(p.resize_width / p.resize_height - width / height) < 2 / min(p.resize_width, p.resize_height) + 1e-9
    assert p.crop_left == (p.resize_width - p.bucket_width) // 2
    assert p.crop_top == (p.resize_height - p.bucket_height) // 2


def test_known_placement_numbers():
    p = place_in_bucket(1920, 1080, (1344, 768))
    assert (p.resize_width, p.resize_height, p.crop_left, p.crop_top) == (1365, 768, 10, 0)
    p = place_in_bucket(100, 300, (64, 128))
    assert (p.resize_width, p.resize_height, p.crop_left, p.crop_top) == (64, 192, 0, 32)


def test_disabled_buckets_square_crop_and_bad_settings_rejected():
    p = assign_bucket(60, 40, BucketConfig(enabled=False, resolution=32, step=8, min_side=16, max_side=64))
    assert (p.bucket_width, p.bucket_height, p.resize_width, p.resize_height, p.crop_left) == (32, 32, 48, 32, 8)
    off_grid = BucketConfig(resolution=1000, step=64)  # sd-scripts accepts it: the square is rounded down
    assert (960, 960) in make_buckets(off_grid) and all(w * h <= 1000 * 1000 for w, h in make_buckets(off_grid))
    with pytest.raises(ValidationError):
        BucketConfig(resolution=400, step=64)  # below min_side 512
    with pytest.raises(ValidationError):
        BucketConfig(min_side=2048, max_side=1024)
