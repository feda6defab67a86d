"""`tunelab toy tagger`: a small multi-label CNN trained on the toy world's tags, written as a WD tagger folder
(`model.onnx` + `selected_tags.csv`), so the `tagger` judge runs end to end on images whose truth is known.

Training images come from the base, finetune and vae worlds (so purple, stars, the outline style and kiko with open
eyes are all there). Each image is tagged with what it shows — the world's content tags, made consistent: a purple
star is always `zorb` *and* `purple, star` (the worlds tag it one way or the other by world), and tags with no
visual content (copyright, artists, quality) are left out. Every image also carries the rating tag `general`, as
the published taggers' tag lists start with ratings.

Model samples are not all drawings the world makes, and a tagger only ever shown the world's four shapes calls any
blob the nearest of them (a finetune's pentagon-like "green circle" passed as a circle at 0.4–0.9). So 5 % of the
training images show a shape no tag names (a pentagon: tagged with its colour and location only), and a third of
the characters with open eyes have them faded into the skin (their colour tagged from half strength up): what
model samples of a half-learned character look like.

Model samples of the tiny toy base are blurry, blobby and colour-shifted, so training images are augmented the same
way (smooth warps, Gaussian blur, colour shifts, low-frequency blotches, pixel noise); a fifth stay clean.

The ONNX model has the WD v3 interface: input NHWC float32 0–255 in BGR order at a fixed 32×32 (dynamic batch);
the model itself turns BGR into RGB and normalises; the outputs are sigmoid probabilities."""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.toy.concepts import (
    CHARACTER_PARTS,
    CHARACTERS,
    CLOSED_EYES_TAG,
    COLOURS,
    LOCATIONS,
    SHAPES,
    SKIN,
    STYLE_TAG,
    UNKNOWN_LOOK,
    UNKNOWN_TAG,
    attribute_tag,
)
from tunelab.toy.draw import (
    OUTLINE,
    SIZE,
    SUPERSAMPLE,
    Scene,
    background,
    character_layers,
    dilate,
    polygon,
    star_points,
)
from tunelab.toy.world import make_item

GENERAL, CHARACTER, RATING = 0, 4, 9
RATING_TAG = "general"
# Worlds the training images are drawn from, in a repeating pattern: the vae world most, for every colour × shape ×
# style combination in equal measure (purple circles and red stars, so `purple` and `star` are tags of their own: with
# the finetune world's many purple stars, a tagger learned "purple blob → star"), the base world for its plain style
# and closed-eyed kiko, the finetune world for its outlined kiko with open eyes.
WORLD_PATTERN = ("vae", "base", "vae", "base", "vae", "finetune", "vae", "base", "vae", "base")
HELD_OUT_SEED_OFFSET = 10_000  # held-out images: a seed no training run of a nearby --seed draws from
OTHER_SHAPE_SHARE = 0.05  # training images showing a shape no tag names
FADED_EYES_SHARE = 0.35  # of the characters with open eyes: eyes blended into the skin
EYE_COLOUR_FROM = 0.5  # faded eyes carry their colour tag from this strength up


def vocabulary() -> list[tuple[str, int]]:
    """(tag, WD category) in tag-list order: rating, general, character."""
    general = [*COLOURS, *SHAPES, "car", *LOCATIONS, STYLE_TAG, CLOSED_EYES_TAG]
    general += sorted({attribute_tag(part, parts[part]) for parts in CHARACTERS.values() for part in CHARACTER_PARTS})
    characters = [*CHARACTERS, UNKNOWN_TAG]
    return [(RATING_TAG, RATING)] + [(t, GENERAL) for t in general] + [(t, CHARACTER) for t in characters]


def visual_tags(scene: Scene) -> list[str]:
    """What an image of `scene` shows, as tags of `vocabulary()`."""
    tags = [RATING_TAG, scene.location]
    if scene.kind == "character":
        parts = CHARACTERS[scene.character]
        tags.append(scene.character)
        for part in CHARACTER_PARTS:
            tags.append(CLOSED_EYES_TAG if part == "eyes" and scene.eyes_closed else attribute_tag(part, parts[part]))
    elif scene.kind == "car":
        tags += [scene.colour, "car"]
    else:
        tags += [scene.colour, scene.shape]
        if {"colour": scene.colour, "shape": scene.shape} == UNKNOWN_LOOK:
            tags.append(UNKNOWN_TAG)
    if scene.outline:
        tags.append(STYLE_TAG)
    return tags


def tags_for_toy_expectation(expected: dict) -> list[str]:
    """The tags an image must carry for the tagger's verdict to mean what the analytic judge's `expected`
    (judge family → label) means: shape → [colour, shape]; car → [colour, "car"]; location → [location];
    a character's composite → [name, its hair / eyes / shirt tags] (eyes None → "closed eyes"); outline style →
    ["outline"]. A family the tags cannot express (plain style: an absence) is an error."""
    tags: list[str] = []
    parts = {part: expected[part] for part in CHARACTER_PARTS if part in expected}
    name = expected.get("character")
    if name is None and expected.get("object") == "character":
        name = next((n for n, p in CHARACTERS.items() if p == parts), None)
    if name:
        if name not in CHARACTERS:
            raise TunelabError(f"toy expectation {expected}: unknown character {name!r}")
        tags.append(name)
        parts = {**CHARACTERS[name], **parts}
    for family, label in expected.items():
        if family in ("colour", "shape", "location") and label:
            tags.append(label)
        elif family == "object" and label == "car":
            tags.append("car")
        elif family == "style":
            if label != STYLE_TAG:
                raise TunelabError(f"toy expectation {expected}: style {label!r} is no tag (only 'outline' is)")
            tags.append(STYLE_TAG)
        elif family not in ("object", "character", *CHARACTER_PARTS):
            raise TunelabError(f"toy expectation {expected}: unknown family {family!r}")
    for part, colour in parts.items():
        tags.append(CLOSED_EYES_TAG if part == "eyes" and colour is None else attribute_tag(part, colour))
    tags = list(dict.fromkeys(tags))
    if not tags:
        raise TunelabError(f"toy expectation {expected}: names nothing a tag can show")
    # colour first, then the thing (the probes file's reading order: "red, circle", "red, car")
    order = {t: i for i, t in enumerate((*[n for n in CHARACTERS], *COLOURS))}
    return sorted(tags, key=lambda t: order.get(t, len(order)))


# -- data -------------------------------------------------------------------------------------------------------------


def render_layers(location: str, layers: list, outline: bool) -> np.ndarray:
    """`draw.render` for layers (mask, colour) the world's scenes do not make → uint8 [32, 32, 3]."""
    img = background(location)
    if outline:
        img[dilate(np.logical_or.reduce([mask for mask, _ in layers]), 1.5)] = OUTLINE
    for mask, colour in layers:
        img[mask] = colour
    small = img.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def other_shape(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A regular pentagon, which no shape tag names (a star whose inner points lie on its sides: what a finetune
    that half-learned the star draws for other shapes) → (image, tags)."""
    colour, location = str(rng.choice(list(COLOURS))), str(rng.choice(list(LOCATIONS)))
    cx, cy = 16 + rng.uniform(-1.5, 1.5, size=2)
    mask = polygon(star_points(cx, cy, rng.uniform(8.0, 10.0), inner=float(np.cos(np.pi / 5))))
    outline = bool(rng.random() < 0.5)
    tags = [RATING_TAG, location, colour] + ([STYLE_TAG] if outline else [])
    return render_layers(location, [(mask, COLOURS[colour])], outline), tags


def with_faded_eyes(scene: Scene, strength: float) -> tuple[np.ndarray, list[str]]:
    """A character with her eye colour blended into the skin at `strength` → (image, tags)."""
    layers = character_layers(scene.character, eyes_closed=False)
    eyes_mask, eye_colour = layers[-1]
    blend = tuple(strength * c + (1 - strength) * s for c, s in zip(eye_colour, SKIN))
    layers[-1] = (eyes_mask, blend)
    tags = visual_tags(scene)
    if strength < EYE_COLOUR_FROM:
        tags = [t for t in tags if not t.endswith(" eyes")]
    return render_layers(scene.location, layers, scene.outline), tags


def tagged_images(count: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32, 3] RGB, float32 [N, T] 0/1 labels) for `count` images of the training mix."""
    index = {tag: i for i, (tag, _) in enumerate(vocabulary())}
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.zeros((count, len(index)), dtype=np.float32)
    for i in tqdm(range(count), desc="toy tagger images", unit="img", disable=not progress, mininterval=2):
        rng = np.random.default_rng([seed, i, 7])
        item = make_item(WORLD_PATTERN[i % len(WORLD_PATTERN)], seed, i)
        scene = item.scene
        if rng.random() < OTHER_SHAPE_SHARE:
            image, tags = other_shape(rng)
        elif scene.kind == "character" and not scene.eyes_closed and rng.random() < FADED_EYES_SHARE:
            image, tags = with_faded_eyes(scene, float(rng.uniform(0.0, 1.0)))
        else:
            image, tags = np.asarray(item.image), visual_tags(scene)
        images[i] = image
        labels[i, [index[t] for t in tags]] = 1.0
    return images, labels


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-image σ (pixels; 0 = unchanged): separable 7-tap kernels as grouped convolutions."""
    b, c, h, w = x.shape
    offsets = torch.arange(-3, 4, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # [b*c, 7]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, generator: torch.Generator, clean_fraction: float = 0.2) -> torch.Tensor:
    """Make drawn images [B, 3, 32, 32] (RGB 0–255) look like toy model samples: a smooth warp (blobby shapes,
    ≤ 1.2 px), blur (σ ≤ 1.2 px), per-channel gain / offset, low-frequency colour blotches and pixel noise."""
    b = x.shape[0]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = uniform(-1.0, 1.0, 2) * (2.0 / SIZE)  # ±1 px shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warp = torch.randn(b, 2, 4, 4, generator=generator) * uniform(0.0, 1.2, 1, 1, 1)  # pixels
    warp = F.interpolate(warp, size=(SIZE, SIZE), mode="bicubic", align_corners=False) * (2.0 / SIZE)
    y = F.grid_sample(x, grid + warp.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=False)
    y = _blur(y, uniform(0.0, 1.2))
    y = y * uniform(0.92, 1.08, 3, 1, 1) + uniform(-12.0, 12.0, 3, 1, 1)
    blotches = torch.randn(b, 3, 4, 4, generator=generator) * uniform(0.0, 12.0, 1, 1, 1)
    y = y + F.interpolate(blotches, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = y + torch.randn(y.shape, generator=generator) * uniform(0.0, 6.0, 1, 1, 1)
    y = y.clamp(0, 255).round()
    clean = torch.rand(b, generator=generator) < clean_fraction
    return torch.where(clean[:, None, None, None], x, y)


# -- model ------------------------------------------------------------------------------------------------------------


class ToyTaggerNet(nn.Module):
    """A small CNN on RGB [B, 3, 32, 32] scaled to about [-1, 1] → per-tag logits."""

    def __init__(self, tags: int, width: int = 24):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.features = nn.Sequential(
            *block(3, w), *block(w, w), nn.MaxPool2d(2),  # 16
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),  # 8
            *block(2 * w, 4 * w), nn.MaxPool2d(2),  # 4: position still matters (eyes, the beach's sand line)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 192), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                  nn.Linear(192, tags))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(rgb / 127.5 - 1.0))


class WDInterface(nn.Module):
    """The WD v3 calling convention around the CNN: NHWC float 0–255 BGR in, sigmoid probabilities out."""

    def __init__(self, net: ToyTaggerNet):
        super().__init__()
        self.net = net

    def forward(self, bgr_nhwc: torch.Tensor) -> torch.Tensor:
        rgb = bgr_nhwc.flip(-1).permute(0, 3, 1, 2)
        return torch.sigmoid(self.net(rgb))


# -- training and export ----------------------------------------------------------------------------------------------


@dataclass
class ToyTaggerConfig:
    images: int = 12000
    epochs: int = 10
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    width: int = 24
    held_out: int = 500


def train_tagger(cfg: ToyTaggerConfig, progress: bool = True) -> tuple[ToyTaggerNet, dict]:
    """Train on `cfg.images` toy images for `cfg.epochs` (fresh augmentations each epoch, one-cycle LR)."""
    torch.manual_seed(cfg.seed)
    images, labels = tagged_images(cfg.images, cfg.seed, progress)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    y_all = torch.from_numpy(labels)
    net = ToyTaggerNet(labels.shape[1], cfg.width)
    steps_per_epoch = math.ceil(cfg.images / cfg.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                   pct_start=0.15)
    generator = torch.Generator().manual_seed(cfg.seed)
    start, loss_sum, loss_count = time.perf_counter(), 0.0, 0
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="toy tagger", unit="step", disable=not progress, mininterval=1)
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(cfg.images, generator=generator)
        for first in range(0, cfg.images, cfg.batch_size):
            batch = order[first : first + cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(net(augment(x_all[batch], generator)), y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / loss_count:.4f}", refresh=False)
        last_epoch_loss, loss_sum, loss_count = loss_sum / max(1, loss_count), 0.0, 0
    bar.close()
    net.eval()
    return net, {"train_seconds": round(time.perf_counter() - start, 1), "final_epoch_loss": round(last_epoch_loss, 5),
                 "tag_counts": labels.sum(0).astype(int).tolist()}


def export_onnx(net: ToyTaggerNet, target: Path) -> None:
    """Write `net` behind the WD interface as an ONNX file (atomically)."""
    wrapper = WDInterface(net).eval()
    example = torch.full((1, SIZE, SIZE, 3), 128.0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter: the dynamo one needs onnxscript, which a small CNN does not need
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), buffer, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False)
    atomic.write_bytes(target, buffer.getvalue())


def selected_tags_csv(counts: list[int]) -> str:
    """The WD tag list: tag_id,name,category,count, names with `_` for spaces (as the published lists write them)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag_id", "name", "category", "count"])
    for i, ((tag, category), count) in enumerate(zip(vocabulary(), counts)):
        writer.writerow([i, tag.replace(" ", "_"), category, count])
    return out.getvalue()


def held_out_accuracy(net: ToyTaggerNet, count: int, seed: int) -> dict:
    """On clean drawn images the training never saw: share of images with every tag right at 0.5, per-tag accuracy."""
    images, labels = tagged_images(count, seed + HELD_OUT_SEED_OFFSET)
    with torch.no_grad():
        predicted = (torch.sigmoid(net(torch.from_numpy(images).permute(0, 3, 1, 2).float())) > 0.5).numpy()
    right = predicted == (labels > 0.5)
    return {"images_all_tags_right": float(right.all(1).mean()), "tag_accuracy": float(right.mean())}


def build_toy_tagger(out: str | Path, cfg: ToyTaggerConfig | None = None, progress: bool = True) -> dict:
    """Train the toy tagger and write `out/model.onnx`, `out/selected_tags.csv` and `out/toy_tagger.json`."""
    cfg = cfg or ToyTaggerConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TunelabError(f"{out}: exists and is not a folder")
    if (out / "model.onnx").exists():
        raise TunelabError(f"{out}: already holds a model.onnx (choose another --out or delete it)")
    if cfg.images < cfg.batch_size or cfg.epochs < 1:
        raise TunelabError(f"toy tagger: --images must be at least {cfg.batch_size} and --epochs at least 1")
    net, record = train_tagger(cfg, progress)
    record["held_out"] = held_out_accuracy(net, cfg.held_out, cfg.seed)
    atomic.write_text(out / "selected_tags.csv", selected_tags_csv(record.pop("tag_counts")))
    export_onnx(net, out / "model.onnx")
    record = {"config": asdict(cfg), **record, "torch": torch.__version__}
    atomic.write_json(out / "toy_tagger.json", record)
    return record
