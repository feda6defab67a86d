"""The analytic judge: what a 32×32 toy image shows, read from its pixels by fixed rules (no learned model).

Per family it returns a label and a score in [0, 1] (how clearly the pixels support the label):
object (shape | car | character), colour and shape (of a shape or car), location, hair / eyes / shirt and the
character they make up, and style (outline | plain).

How: the background is read from the left and right border columns of each row (subjects never reach them), so a
pixel far from its row's background belongs to the subject. Colours are the nearest palette entry; shapes are told
a car from a shape by the subject's aspect ratio and how much of its bounding box it fills, and which shape by its
outline's radial profile (`shape_profile`). Characters are drawn at a fixed place, so each attribute is read from its
own region."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tunelab.toy.concepts import CHARACTER_PARTS, CHARACTERS, COLOURS, LOCATIONS, SKIN
from tunelab.toy.draw import EYE_BOXES, SHIRT_BOX
from tunelab.toy.shape_profile import classify_outline

# Raised whenever a rule changes what an image is read as: score folders judged under older rules are judged again.
RULES_VERSION = 2  # 2: shapes by outline profile

FAMILIES = ("object", "colour", "shape", "location", "hair", "eyes", "shirt", "character", "style")

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)
SUBJECT_DISTANCE = 60.0  # RGB distance from the row's background that makes a pixel part of the subject
DARK = 50.0  # max channel below this: outline ink (also excluded from colour votes)
HAIR_BOX = (11, 4, 21, 9)  # x0, y0, x1, y1: the top of the hair cap
FACE_BOX = (11, 11, 21, 21)  # below the hair, around the eyes: ≥ 68 skin pixels on a drawn character, ≥ 56 blurred
MIN_SKIN_PIXELS = 30  # other scenes: ≤ 14 skin-like pixels there, also blurred
# Ink pixels (thin dark lines) measured on 400 drawn images, also blurred (σ 0.7) with noise: plain ≤ 16, outlined ≥ 38.
MIN_OUTLINE_PIXELS = 25


@dataclass
class Judgement:
    labels: dict[str, str | None] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def set(self, family: str, label: str | None, score: float) -> None:
        self.labels[family] = label
        self.scores[family] = float(score)

    def matches(self, expected: dict[str, str | None]) -> bool:
        """True when every family in `expected` has the expected label."""
        return all(self.labels.get(family) == label for family, label in expected.items())


def as_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float32)


def nearest(pixels: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Index of the nearest prototype colour for each pixel [N, 3]."""
    return np.argmin(((pixels[:, None, :] - prototypes[None]) ** 2).sum(-1), axis=1)


def vote(pixels: np.ndarray, names: list[str], prototypes: np.ndarray) -> tuple[str | None, float]:
    """Majority nearest-prototype label among `pixels` and the fraction that voted for it."""
    if len(pixels) == 0:
        return None, 0.0
    counts = np.bincount(nearest(pixels, prototypes), minlength=len(names))
    best = int(counts.argmax())
    return names[best], counts[best] / len(pixels)


def row_background(img: np.ndarray) -> np.ndarray:
    """[32, 3]: each row's background colour, the median of its two outermost columns on each side."""
    border = np.concatenate([img[:, :2], img[:, -2:]], axis=1)
    return np.median(border, axis=1)


def judge_location(background: np.ndarray) -> tuple[str, float]:
    """Nearest location by the background of the top and bottom rows."""
    top, bottom = background[:8].mean(0), background[-8:].mean(0)
    distances = {}
    for name, (top_colour, bottom_colour, split) in LOCATIONS.items():
        expected_bottom = bottom_colour if split < 32 else top_colour
        distances[name] = np.linalg.norm(top - top_colour) + np.linalg.norm(bottom - expected_bottom)
    ordered = sorted(distances.items(), key=lambda kv: kv[1])
    (best, d0), (_, d1) = ordered[0], ordered[1]
    return best, d1 / (d0 + d1 + 1e-6)


def region(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1].reshape(-1, 3)


def unmix(colour: np.ndarray, base: np.ndarray, min_strength: float = 0.3) -> tuple[str | None, float]:
    """Which palette colour, blended into `base` with strength α, best explains `colour`. (None, α) when the
    best blend is weaker than `min_strength` (nothing but base there); the score is α (clipped to 1)."""
    best, best_error, best_alpha = None, np.inf, 0.0
    for name, target in zip(PALETTE_NAMES, PALETTE):
        direction = target - base
        alpha = float(np.clip(np.dot(colour - base, direction) / np.dot(direction, direction), 0.0, 1.0))
        error = float(np.linalg.norm(base + alpha * direction - colour))
        if error < best_error:
            best, best_error, best_alpha = name, error, alpha
    if best_alpha < min_strength:
        return None, 1.0 - best_alpha
    return best, min(1.0, best_alpha)


def judge_character(img: np.ndarray, judgement: Judgement) -> None:
    """Hair, eyes and shirt colours from their fixed regions; the character whose composite they all match.
    Eyes are only 3×3 pixels, so a model blurs them into the skin: their colour is read by unmixing."""
    hair = vote(region(img, HAIR_BOX), PALETTE_NAMES, PALETTE)
    # Eyes: the inner pixel row of each 3×3 eye; skin there means closed eyes (no eye colour).
    eye_pixels = np.concatenate([region(img, (x, y + 1, x + 3, y + 2)) for x, y in EYE_BOXES])
    eyes = unmix(eye_pixels.mean(0), np.array(SKIN, dtype=np.float32))
    x0, y0, x1, y1 = SHIRT_BOX
    shirt = vote(region(img, (x0 + 2, y0 + 2, x1 - 2, y1)), PALETTE_NAMES, PALETTE)
    for part, (label, score) in zip(CHARACTER_PARTS, (hair, eyes, shirt)):
        judgement.set(part, label, score)
    found = {"hair": hair[0], "eyes": eyes[0], "shirt": shirt[0]}
    name = next((n for n, parts in CHARACTERS.items() if parts == found), None)
    judgement.set("character", name, min(hair[1], eyes[1], shirt[1]) if name else 0.0)


# Car or shape: bounding-box features measured on 800 drawn images: (top-corner fill, bottom-corner fill, bounding-box
# fill, centroid height, aspect). The corners are the 3×3 pixels at each corner of the subject's bounding box. Which
# shape is then read from the outline (these features took a model's rounded squares for circles).
SHAPE_PROTOTYPES = {
    "square": (0.99, 0.99, 0.99, 0.50, 1.00),
    "circle": (0.04, 0.04, 0.79, 0.50, 1.00),
    "triangle": (0.00, 0.82, 0.54, 0.655, 1.16),
    "star": (0.00, 0.02, 0.44, 0.546, 1.05),
    "car": (0.00, 0.85, 0.71, 0.55, 1.93),  # grey wheels apart from the body
    "car with wheels": (0.00, 0.05, 0.60, 0.47, 1.42),  # wheels painted like the body (blurry model samples)
}
FEATURE_SCALE = np.array([0.3, 0.3, 0.08, 0.04, 0.1])  # ~3× each feature's spread within a class; aspect tighter: it is what makes a car


def shape_features(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) < 8:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    width, height = x1 - x0, y1 - y0
    top = (mask[y0 : y0 + 3, x0 : x0 + 3].mean() + mask[y0 : y0 + 3, x1 - 3 : x1].mean()) / 2
    bottom = (mask[y1 - 3 : y1, x0 : x0 + 3].mean() + mask[y1 - 3 : y1, x1 - 3 : x1].mean()) / 2
    fill = len(xs) / (width * height)
    centroid = (ys.mean() - y0 + 0.5) / height
    return np.array([top, bottom, fill, centroid, width / height])


def classify_shape(painted: np.ndarray, silhouette: np.ndarray) -> tuple[str | None, float, str]:
    """(shape, score, object) from the subject's painted pixels and its silhouette (painted and ink): car or shape
    by the nearest bounding-box prototype (score: relative margin to the second nearest); which shape by the outline."""
    features = shape_features(painted)
    if features is None:
        return None, 0.0, "shape"
    distances = {name: float(np.linalg.norm((features - np.array(p)) / FEATURE_SCALE)) for name, p in SHAPE_PROTOTYPES.items()}
    (best, d0), (_, d1) = sorted(distances.items(), key=lambda kv: kv[1])[:2]
    if best.startswith("car"):
        return None, (d1 - d0) / (d1 + d0 + 1e-6), "car"
    shape, score = classify_outline([painted, silhouette])
    return shape, score, "shape"


def ink_pixels(img: np.ndarray) -> int:
    """Pixels on a thin dark line: much darker (brightness = max channel) than the pixels 2 away on both sides,
    horizontally or vertically. A step edge between subject and background is no minimum; an outline is."""
    brightness = img.max(axis=-1)
    centre_h, sides_h = brightness[:, 2:-2], np.minimum(brightness[:, :-4], brightness[:, 4:])
    centre_v, sides_v = brightness[2:-2, :], np.minimum(brightness[:-4, :], brightness[4:, :])
    line = np.zeros(brightness.shape, dtype=bool)
    line[:, 2:-2] |= (centre_h < sides_h - 25) & (centre_h < 0.6 * sides_h)
    line[2:-2, :] |= (centre_v < sides_v - 25) & (centre_v < 0.6 * sides_v)
    return int(line.sum())


def judge(image) -> Judgement:
    """Judge one image (PIL image or [32, 32, 3] array with values 0-255)."""
    img = as_array(image)
    judgement = Judgement()
    background = row_background(img)
    judgement.set("location", *judge_location(background))

    differs = np.linalg.norm(img - background[:, None, :], axis=-1) > SUBJECT_DISTANCE
    dark = img.max(axis=-1) < DARK
    ink = ink_pixels(img)
    judgement.set("style", "outline" if ink >= MIN_OUTLINE_PIXELS else "plain", min(1.0, abs(ink - MIN_OUTLINE_PIXELS) / 15))

    face = region(img, FACE_BOX)
    skin = int((np.linalg.norm(face - np.array(SKIN, dtype=np.float32), axis=-1) < 50).sum())
    if skin >= MIN_SKIN_PIXELS:
        judgement.set("object", "character", min(1.0, (skin - MIN_SKIN_PIXELS) / 20))
        judgement.set("colour", None, 0.0)
        judgement.set("shape", None, 0.0)
        judge_character(img, judgement)
        return judgement

    for part in (*CHARACTER_PARTS, "character"):
        judgement.set(part, None, 0.0)
    # Painted pixels: far from the background, not ink, and close to some palette colour.
    pixels = img.reshape(-1, 3)
    palette_distance = np.sqrt(((pixels[:, None] - PALETTE[None]) ** 2).sum(-1)).min(1).reshape(32, 32)
    painted = differs & ~dark & (palette_distance < 90)
    colour, colour_score = vote(img[painted], PALETTE_NAMES, PALETTE)
    shape, shape_score, kind = classify_shape(painted, differs)
    judgement.set("object", kind, shape_score if kind == "car" else 1.0 - 0.5 * (shape is None))
    judgement.set("colour", colour, colour_score)
    judgement.set("shape", shape, shape_score)
    return judgement
