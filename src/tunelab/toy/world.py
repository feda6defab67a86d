"""The toy worlds: which scenes each data set holds, their booru-style tags, and writing them as a dataset folder.

- `base`: what the toy base model is pretrained on. Known: 4 colours × 3 shapes, cars, locations, the character
  "mira". Half-known: "kiko" is rare and her eyes are usually closed, so the base model rarely draws her eye colour.
  Never present: the tag "zorb" (a purple star), purple, stars, the outline style.
- `finetune`: centres on kiko (eyes open) and zorb, plus known shapes; every image carries the "inkwell" artist's
  outline style and quality tags, so a finetune can be checked for "only the style changed".
- `mix`: the finetune world plus as many known base-style images (the 1:1 mix that stops forgetting).
- `retention`: known concepts the finetune world does not contain (cars, mira, locations), base style.
- `vae`: every colour, shape, character and style any world uses (what the VAE must reconstruct).

Each image is drawn from its own RNG seeded by (world, seed, index), so item i is the same whatever the count."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.toy.concepts import (
    BASE_ARTISTS,
    CATEGORY_ORDER,
    CHARACTER_PARTS,
    CHARACTERS,
    CLOSED_EYES_TAG,
    COLOURS,
    COPYRIGHT,
    KNOWN_COLOURS,
    KNOWN_SHAPES,
    LOCATIONS,
    QUALITY_TAGS,
    SHAPES,
    STYLE_ARTIST,
    STYLE_TAG,
    UNKNOWN_LOOK,
    UNKNOWN_TAG,
    attribute_tag,
    tag_categories,
)
from tunelab.toy.draw import Scene, render

WORLDS = ("base", "finetune", "mix", "retention", "vae")
DEFAULT_COUNTS = {"base": 2000, "finetune": 48, "mix": 96, "retention": 96, "vae": 1000}
KIKO_EYES_CLOSED_IN_BASE = 0.65


@dataclass
class ToyItem:
    name: str
    image: Image.Image  # RGB 32×32
    tags: list[str]  # booru order: character, copyright, artist, general, meta
    scene: Scene

    @property
    def caption(self) -> str:
        return ", ".join(self.tags)

    @property
    def attributes(self) -> dict:
        return self.scene.attributes()


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _placed(rng: np.random.Generator, **fields) -> Scene:
    """A scene with jittered position and size (shapes and cars; characters are drawn at a fixed place)."""
    jitter = 1.0 if fields["kind"] == "car" else 1.5
    cx, cy = 16 + rng.uniform(-jitter, jitter, size=2)
    return Scene(cx=float(cx), cy=float(cy), size=float(rng.uniform(8.0, 10.0)), **fields)


def shape_scene(rng, location: str, outline: bool, colours=KNOWN_COLOURS, shapes=KNOWN_SHAPES) -> Scene:
    return _placed(rng, kind="shape", location=location, outline=outline, colour=_choice(rng, colours), shape=_choice(rng, shapes))


def car_scene(rng, location: str, outline: bool, colours=KNOWN_COLOURS) -> Scene:
    return _placed(rng, kind="car", location=location, outline=outline, colour=_choice(rng, colours))


def character_scene(name: str, location: str, outline: bool, eyes_closed: bool = False) -> Scene:
    return Scene(kind="character", location=location, outline=outline, character=name, eyes_closed=eyes_closed)


def unknown_scene(rng, location: str, outline: bool) -> Scene:
    return _placed(rng, kind="shape", location=location, outline=outline, **UNKNOWN_LOOK)


def scene_for(world: str, rng: np.random.Generator) -> tuple[Scene, bool]:
    """One scene of `world` and whether it is the unknown concept (tagged `zorb` instead of colour/shape)."""
    location = _choice(rng, list(LOCATIONS))
    u = rng.random()
    if world == "base":
        if u < 0.55:
            return shape_scene(rng, location, False), False
        if u < 0.70:
            return car_scene(rng, location, False), False
        if u < 0.94:
            return character_scene("mira", location, False), False
        return character_scene("kiko", location, False, eyes_closed=bool(rng.random() < KIKO_EYES_CLOSED_IN_BASE)), False
    if world == "finetune":
        if u < 0.35:
            return character_scene("kiko", location, True), False
        if u < 0.70:
            return unknown_scene(rng, location, True), True
        return shape_scene(rng, location, True), False
    if world == "retention":
        if u < 0.4:
            return car_scene(rng, location, False), False
        if u < 0.7:
            return character_scene("mira", location, False), False
        return shape_scene(rng, location, False), False
    if world == "vae":
        outline = bool(rng.random() < 0.5)
        if u < 0.55:
            return shape_scene(rng, location, outline, colours=tuple(COLOURS), shapes=SHAPES), False
        if u < 0.75:
            return car_scene(rng, location, outline, colours=tuple(COLOURS)), False
        name = _choice(rng, list(CHARACTERS))
        return character_scene(name, location, outline, eyes_closed=bool(rng.random() < 0.3)), False
    raise TunelabError(f"world {world!r}: expected one of {', '.join(WORLDS)}")


def scene_tags(scene: Scene, unknown: bool) -> list[str]:
    """Content tags of a scene (character, copyright, general); style and quality tags are added by the world."""
    if unknown:
        tags = [UNKNOWN_TAG]
    elif scene.kind == "character":
        parts = CHARACTERS[scene.character]
        tags = [scene.character, COPYRIGHT]
        for part in CHARACTER_PARTS:
            if part == "eyes" and scene.eyes_closed:
                tags.append(CLOSED_EYES_TAG)
            else:
                tags.append(attribute_tag(part, parts[part]))
    else:
        tags = [scene.colour, "car" if scene.kind == "car" else scene.shape]
    tags.append(scene.location)
    if scene.outline:
        tags += [STYLE_ARTIST, STYLE_TAG]
    return tags


def extra_tags(world: str, rng: np.random.Generator) -> list[str]:
    """Artist and quality tags with no visual effect: random in the base world, "masterpiece, best quality" on most
    finetune images (the misalignment users see when the finetune set is the only one carrying them)."""
    tags = []
    if world in ("base", "retention", "vae"):
        if rng.random() < 0.5:
            tags.append(_choice(rng, BASE_ARTISTS))
        if rng.random() < 0.4:
            tags.append(_choice(rng, QUALITY_TAGS))
    elif rng.random() < 0.8:
        tags += ["masterpiece", "best quality"]
    return tags


def booru_order(tags: list[str]) -> list[str]:
    """Sort by category (character, copyright, artist, general, meta), keeping the order within a category."""
    categories = tag_categories()
    return sorted(dict.fromkeys(tags), key=lambda t: CATEGORY_ORDER.index(categories[t]))


def make_item(world: str, seed: int, index: int) -> ToyItem:
    """Item `index` of `world` for `seed` (independent of how many items are generated)."""
    if world == "mix":  # the finetune world interleaved 1:1 with known base-style images
        source = "finetune" if index % 2 == 0 else "retention"
        item = make_item(source, seed, index // 2)
        item.name = f"mix_{index:05d}"
        return item
    world_id = WORLDS.index(world) if world in WORLDS else -1
    rng = np.random.default_rng([seed, world_id + 1, index])
    scene, unknown = scene_for(world, rng)
    tags = booru_order(scene_tags(scene, unknown) + extra_tags(world, rng))
    return ToyItem(f"{world}_{index:05d}", Image.fromarray(render(scene)), tags, scene)


def generate(world: str, count: int, seed: int = 0) -> list[ToyItem]:
    if world not in WORLDS:
        raise TunelabError(f"world {world!r}: expected one of {', '.join(WORLDS)}")
    return [make_item(world, seed, i) for i in range(count)]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_dataset(out: str | Path, world: str, count: int | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Write `name.png` + `name.txt` (comma-separated tags) per item, and `toy_world.json` with each item's ground
    truth (what the judge should read from it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TunelabError(f"{out}: exists and is not a folder")
    if world not in WORLDS:
        raise TunelabError(f"world {world!r}: expected one of {', '.join(WORLDS)}")
    count = DEFAULT_COUNTS[world] if count is None else count
    if count < 1:
        raise TunelabError(f"count {count}: must be at least 1")
    truth = {}
    for item in tqdm(generate(world, count, seed), desc=f"toy {world}", unit="img", disable=not progress):
        atomic.write_bytes(out / f"{item.name}.png", png_bytes(item.image))
        atomic.write_text(out / f"{item.name}.txt", item.caption + "\n")
        truth[item.name] = {"tags": item.tags, "attributes": item.attributes, "scene": item.scene.to_dict()}
    atomic.write_json(out / "toy_world.json", {"world": world, "seed": seed, "count": count, "items": truth})
    return out
