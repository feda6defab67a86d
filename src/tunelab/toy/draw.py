"""Scene → 32×32 RGB pixels. A `Scene` is the ground truth of one toy image; `render` draws it.

Shapes are rasterised at 4× and averaged down, so edges are anti-aliased like a downscaled illustration (a hard
pixel staircase is needlessly hard for a 4× VAE). Positions and sizes come from the scene, so rendering is a pure
function: the same scene always gives the same pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tunelab.toy.concepts import CHARACTERS, COLOURS, LOCATIONS, OUTLINE, SKIN, WHEEL

SIZE = 32
SUPERSAMPLE = 4
OUTLINE_WIDTH = 1.5  # pixels

# The character is drawn at a fixed place, so the judge can read each attribute from its own region.
HEAD_CENTRE, HEAD_RADIUS = (16.0, 13.0), 7.5
EYE_BOXES = ((11, 13), (18, 13))  # top-left (x, y) of the two 3×3 eyes
SHIRT_BOX = (8, 22, 24, 32)  # x0, y0, x1, y1


@dataclass(frozen=True)
class Scene:
    """What one image shows. kind: "shape" | "car" | "character"."""

    kind: str
    location: str
    colour: str | None = None  # shape / car colour
    shape: str | None = None  # kind == "shape"
    character: str | None = None  # kind == "character"
    eyes_closed: bool = False
    outline: bool = False
    cx: float = 16.0
    cy: float = 16.0
    size: float = 9.0

    def attributes(self) -> dict:
        """Ground truth per judge family (None where the family does not apply)."""
        parts = CHARACTERS.get(self.character, {})
        return {
            "object": self.kind,
            "colour": self.colour,
            "shape": self.shape,
            "location": self.location,
            "hair": parts.get("hair"),
            "eyes": None if self.eyes_closed else parts.get("eyes"),
            "shirt": parts.get("shirt"),
            "character": self.character if self.kind == "character" and not self.eyes_closed else None,
            "style": "outline" if self.outline else "plain",
        }

    def to_dict(self) -> dict:
        return asdict(self)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-unit coordinates of the supersampled grid's sample centres."""
    n = SIZE * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)  # x, y


X, Y = _grid()


def disk(cx: float, cy: float, r: float) -> np.ndarray:
    return (X - cx) ** 2 + (Y - cy) ** 2 <= r * r


def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)


def polygon(points: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test on the grid (works for the non-convex star)."""
    inside = np.zeros(X.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        crosses = (y0 > Y) != (y1 > Y)
        x_at = (x1 - x0) * (Y - y0) / (y1 - y0 + 1e-12) + x0
        inside ^= crosses & (X < x_at)
    return inside


def star_points(cx: float, cy: float, r: float, inner: float = 0.45, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        radius = r if i % 2 == 0 else r * inner
        angle = -np.pi / 2 + i * np.pi / points
        out.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return out


def shape_mask(shape: str, cx: float, cy: float, s: float) -> np.ndarray:
    if shape == "circle":
        return disk(cx, cy, s)
    if shape == "square":
        return box(cx - 0.85 * s, cy - 0.85 * s, cx + 0.85 * s, cy + 0.85 * s)
    if shape == "triangle":
        return polygon([(cx, cy - s), (cx + 1.05 * s, cy + 0.8 * s), (cx - 1.05 * s, cy + 0.8 * s)])
    if shape == "star":
        return polygon(star_points(cx, cy, 1.05 * s))
    raise ValueError(f"unknown shape {shape!r}")


def car_masks(cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """(painted body, wheels): a wide body with a cabin on top and two wheels below."""
    body = box(cx - 10.5, cy - 2, cx + 10.5, cy + 4) | box(cx - 6, cy - 7, cx + 5, cy - 2)
    wheels = disk(cx - 6, cy + 5, 3) | disk(cx + 6, cy + 5, 3)
    return body & ~wheels, wheels


def character_layers(name: str, eyes_closed: bool) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """Layers (mask, colour) back to front: shirt, face, hair, eyes."""
    parts = CHARACTERS[name]
    hx, hy = HEAD_CENTRE
    hair = (disk(hx, hy - 1, HEAD_RADIUS + 1) & (Y < hy - 2)) | (
        disk(hx, hy, HEAD_RADIUS + 1) & ((X < hx - 5.5) | (X > hx + 5.5)) & (Y < hy + 5)
    )
    layers = [
        (box(*SHIRT_BOX), COLOURS[parts["shirt"]]),
        (disk(hx, hy, HEAD_RADIUS), SKIN),
        (hair, COLOURS[parts["hair"]]),
    ]
    if not eyes_closed:
        eyes = box(EYE_BOXES[0][0], EYE_BOXES[0][1], EYE_BOXES[0][0] + 3, EYE_BOXES[0][1] + 3)
        eyes |= box(EYE_BOXES[1][0], EYE_BOXES[1][1], EYE_BOXES[1][0] + 3, EYE_BOXES[1][1] + 3)
        layers.append((eyes, COLOURS[parts["eyes"]]))
    return layers


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation by a disk of `radius` pixels (on the supersampled grid)."""
    r = int(np.ceil(radius * SUPERSAMPLE))
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= r * r and (dx or dy):
                out |= padded[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def background(location: str) -> np.ndarray:
    top, bottom, split = LOCATIONS[location]
    img = np.empty((SIZE * SUPERSAMPLE, SIZE * SUPERSAMPLE, 3), dtype=np.float32)
    img[:] = top
    img[split * SUPERSAMPLE :] = bottom
    return img


def subject_layers(scene: Scene) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    if scene.kind == "shape":
        return [(shape_mask(scene.shape, scene.cx, scene.cy, scene.size), COLOURS[scene.colour])]
    if scene.kind == "car":
        body, wheels = car_masks(scene.cx, scene.cy)
        return [(body, COLOURS[scene.colour]), (wheels, WHEEL)]
    if scene.kind == "character":
        return character_layers(scene.character, scene.eyes_closed)
    raise ValueError(f"unknown scene kind {scene.kind!r}")


def render(scene: Scene) -> np.ndarray:
    """→ uint8 [32, 32, 3]."""
    img = background(scene.location)
    layers = subject_layers(scene)
    if scene.outline:
        union = np.logical_or.reduce([mask for mask, _ in layers])
        img[dilate(union, OUTLINE_WIDTH)] = OUTLINE
    for mask, colour in layers:
        img[mask] = colour
    small = img.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)
