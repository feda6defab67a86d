"""Decode an image once at prepare time: is it usable, what size is it, what is its content hash.

`inspect_image` never raises for a bad file: it returns an `ImageSkip` with a named reason. `to_rgb` is the one
mode conversion every later stage uses (the latent cache decodes with `load_rgb`), so what `prepare` accepted is
exactly what training sees."""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tunelab.data.config import ImageChecks

# Pillow format name → the file extensions that honestly carry it.
_FORMAT_EXTENSIONS = {
    "PNG": {".png"},
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "WEBP": {".webp"},
    "GIF": {".gif"},
    "BMP": {".bmp"},
    "TIFF": {".tif", ".tiff"},
    "AVIF": {".avif"},
    "JPEG2000": {".jp2", ".j2k"},
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """A usable image: size after EXIF orientation, detected format, and notes on conversions applied."""

    width: int
    height: int
    format: str
    mode: str
    content_hash: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageSkip:
    reason: str  # short, stable, countable: "empty_file", "truncated", "too_many_pixels", ...
    detail: str = ""
    content_hash: str | None = None


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def to_rgb(image: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """Convert any accepted mode to 8-bit RGB; transparency is composited on white. Returns (image, notes)."""
    notes: list[str] = []
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 → RGB conversion clips at 255 (a white image); scale 16 bits down to 8 instead.
        pixels = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((pixels >> 8).clip(0, 255).astype(np.uint8), "L")
        notes.append("16bit_to_8bit")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            notes.append("alpha_on_white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode == "CMYK":
        notes.append("cmyk_to_rgb")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, tuple(notes)


def _extension_note(path: Path, image_format: str | None) -> tuple[str, ...]:
    honest = _FORMAT_EXTENSIONS.get(image_format or "")
    if honest is not None and path.suffix.lower() not in honest:
        return (f"extension_mismatch:{image_format.lower()}_as_{path.suffix.lower().lstrip('.') or 'none'}",)
    return ()


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb guard set to our limit (it raises above 2 × MAX_IMAGE_PIXELS, warns above 1 ×;
    we check the exact limit ourselves and silence the warning)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def inspect_bytes(data: bytes, path: Path, checks: ImageChecks) -> ImageFacts | ImageSkip:
    """Check one image held in memory: header, size limits, frames, a full verify + decode, mode conversion."""
    digest = content_hash(data)
    if not data:
        return ImageSkip("empty_file", "", digest)
    try:
        with _pixel_limit(checks.max_pixels):
            image = Image.open(io.BytesIO(data))  # header only
            image_format, mode, frames = image.format, image.mode, getattr(image, "n_frames", 1)
            width, height = image.size
            if width * height > checks.max_pixels:
                return ImageSkip("too_many_pixels", f"{width}x{height} > {checks.max_pixels}", digest)
            if checks.min_side is not None and min(width, height) < checks.min_side:
                return ImageSkip("too_small", f"{width}x{height} < {checks.min_side}", digest)
            if frames > 1 and checks.animated == "skip":
                return ImageSkip("animated", f"{frames} frames", digest)
            image.verify()  # structure and checksums (PNG CRCs); the object is unusable afterwards
            image = Image.open(io.BytesIO(data))
            image.load()  # the full decode: truncated data fails here
            rgb, notes = to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as e:
        return ImageSkip("too_many_pixels", str(e)[:200], digest)
    except UnidentifiedImageError:
        return ImageSkip("not_an_image", "no image format recognised", digest)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, ZeroDivisionError) as e:
        reason = "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "corrupt"
        return ImageSkip(reason, f"{type(e).__name__}: {e}"[:200], digest)
    notes = _extension_note(path, image_format) + notes + (("animated_first_frame",) if frames > 1 else ())
    return ImageFacts(rgb.width, rgb.height, image_format or "", mode, digest, notes)


def inspect_image(path: str | Path, checks: ImageChecks) -> ImageFacts | ImageSkip:
    """Read the file once (bytes → hash and decode) and check it; never raises for a bad file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        return ImageSkip("unreadable", f"{type(e).__name__}: {e.strerror or e}")
    return inspect_bytes(data, path, checks)


def load_rgb(path: str | Path, max_pixels: int = ImageChecks().max_pixels) -> Image.Image:
    """The training view of an accepted image: EXIF-oriented, 8-bit RGB, transparency on white (first frame)."""
    with _pixel_limit(max_pixels), Image.open(path) as image:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))[0]
