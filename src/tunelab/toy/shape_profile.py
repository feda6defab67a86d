"""Which shape a subject's outline is: its radial profile (how far the edge is from the centroid in 32 directions,
divided by √area) compared with the profiles of the shapes the toy world draws.

Why not bounding-box features (how much of its box a mask fills, whether the box's corners are filled): model
samples round a square's corners and pinch its sides, and an outlined square's painted pixels stop short of its ink,
so a finetune's squares filled their box like circles and were read as circles (by eye they are squares; the toy
tagger read them as squares too). The profile keeps a square's four bulges and a star's five arms however the corners
are rounded.

The reference profiles are measured on the drawing code itself (`draw.shape_mask` at the world's sizes and a few
sub-pixel positions), sharp and blurred the way a model's samples are; stars also with fatter arms than the world
draws (inner radius up to 0.7 of the outer), which is how a model draws them."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from tunelab.toy.draw import SIZE, SUPERSAMPLE, polygon, shape_mask, star_points

PROFILE_SHAPES = ("circle", "square", "triangle", "star")
ANGLES = 2 * np.pi * np.arange(32) / 32
RAY_STEPS = np.arange(0.25, SIZE * 0.75, 0.25)  # pixels from the centroid
REFERENCE_SIZES = (8.0, 9.0, 10.0)  # the worlds draw sizes 8–10
REFERENCE_OFFSETS = ((0.0, 0.0), (0.5, 0.25), (-0.25, 0.5))
REFERENCE_BLURS = (0.0, 0.8, 1.2)  # Gaussian σ in pixels: drawn, and as soft as model samples
STAR_INNER_RADII = (0.45, 0.55, 0.62, 0.7)  # 0.45: as drawn


def bilinear(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`mask` sampled at pixel coordinates (x, y), pixel centres at +0.5."""
    h, w = mask.shape
    x = np.clip(x - 0.5, 0, w - 1.001)
    y = np.clip(y - 0.5, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    return (mask[y0, x0] * (1 - fx) * (1 - fy) + mask[y0, x0 + 1] * fx * (1 - fy)
            + mask[y0 + 1, x0] * (1 - fx) * fy + mask[y0 + 1, x0 + 1] * fx * fy)


def radial_profile(mask: np.ndarray) -> np.ndarray | None:
    """[32]: distance from the mask's centroid to where each ray first leaves it, over √area. None below 8 pixels."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 8:
        return None
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    x = cx + np.cos(ANGLES)[:, None] * RAY_STEPS[None]
    y = cy + np.sin(ANGLES)[:, None] * RAY_STEPS[None]
    outside = bilinear(mask.astype(np.float32), x, y) < 0.5
    first_out = np.where(outside.any(axis=1), outside.argmax(axis=1), len(RAY_STEPS) - 1)
    return RAY_STEPS[first_out] / np.sqrt(len(xs))


def drawn_mask(fine: np.ndarray, blur: float) -> np.ndarray:
    """A supersampled shape → the 32×32 mask a judge would see (coverage ≥ ½ after an optional blur)."""
    coverage = fine.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))
    if blur:
        softened = Image.fromarray((coverage * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
        coverage = np.asarray(softened) / 255
    return coverage >= 0.5


@lru_cache(maxsize=1)
def reference_profiles() -> tuple[tuple[str, ...], np.ndarray]:
    """(shape per row, [rows, 32]): one mean profile per shape and blur."""
    names, profiles = [], []
    for shape in PROFILE_SHAPES:
        fine = []
        for size in REFERENCE_SIZES:
            for dx, dy in REFERENCE_OFFSETS:
                cx, cy = 16 + dx, 16 + dy
                if shape == "star":
                    fine += [polygon(star_points(cx, cy, 1.05 * size, inner=inner)) for inner in STAR_INNER_RADII]
                else:
                    fine.append(shape_mask(shape, cx, cy, size))
        for blur in REFERENCE_BLURS:
            names.append(shape)
            profiles.append(np.mean([radial_profile(drawn_mask(m, blur)) for m in fine], axis=0))
    return tuple(names), np.stack(profiles)


def classify_outline(masks: list[np.ndarray]) -> tuple[str | None, float]:
    """(shape, score) for a subject seen through several masks (e.g. its painted pixels, and its silhouette with the
    ink): the reference profile nearest to any of them. Score: the relative margin to the nearest other shape."""
    names, references = reference_profiles()
    distances = None
    for mask in masks:
        profile = radial_profile(mask)
        if profile is not None:
            d = np.sqrt(((references - profile) ** 2).mean(axis=1))
            distances = d if distances is None else np.minimum(distances, d)
    if distances is None:
        return None, 0.0
    order = np.argsort(distances)
    best = names[order[0]]
    runner_up = next(i for i in order if names[i] != best)
    d0, d1 = distances[order[0]], distances[runner_up]
    return best, float((d1 - d0) / (d1 + d0 + 1e-6))
