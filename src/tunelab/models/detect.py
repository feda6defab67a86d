"""What a model path is: its storage format (diffusers folder, .safetensors single file, pickle) and, for single
files, its architecture (SD1.5 / SDXL) from the key names. Every problem is one `TunelabError` naming the path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.errors import fail
from tunelab.models.components import Architecture

Format = Literal["diffusers", "single-file", "pickle"]
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container

# One key that only this kind of original-layout checkpoint has (same markers diffusers and A1111 use).
SDXL_MARKER = "conditioner.embedders.1.model.positional_embedding"
SDXL_REFINER_MARKER = "conditioner.embedders.0.model.positional_embedding"
SD15_MARKER = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_MARKER = "cond_stage_model.model.token_embedding.weight"
UNET_MARKER = "model.diffusion_model.input_blocks.0.0.weight"


def detect_format(path: str | Path) -> Format:
    path = Path(path)
    if not path.exists():
        raise fail(path, "no such file or folder")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise fail(path, "folder is not a diffusers model (no model_index.json)")
        return "diffusers"
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise fail(path, f"cannot read ({e.strerror})") from None
    if path.suffix.lower() in PICKLE_SUFFIXES or head.startswith(ZIP_MAGIC):
        return "pickle"
    if path.suffix.lower() == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        return "single-file"
    raise fail(path, "not a model file (expected a .safetensors single file or a diffusers folder)")


def architecture_from_keys(keys, path) -> Architecture:
    keys = set(keys)
    if SDXL_MARKER in keys:
        return "sdxl"
    if SD15_MARKER in keys:
        return "sd15"
    if SDXL_REFINER_MARKER in keys:
        raise fail(path, "SDXL refiner checkpoints are not supported (only SD1.5 and SDXL base layouts)")
    if SD2_MARKER in keys:
        raise fail(path, "SD2.x checkpoints are not supported (only SD1.5 and SDXL)")
    if UNET_MARKER in keys:
        raise fail(path, "unknown architecture: has a UNet (model.diffusion_model.*) but no SD1.5/SDXL text encoder")
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise fail(path, f"unknown architecture: not an SD1.5/SDXL checkpoint (keys: {sample}, ...)")


def architecture_from_model_index(folder: Path) -> Architecture:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise fail(folder / "model_index.json", f"unreadable ({e})") from None
    name = index.get("_class_name", "")
    if name.startswith("StableDiffusionXL") or "text_encoder_2" in index:
        return "sdxl"
    if name.startswith("StableDiffusion") and "text_encoder" in index:
        return "sd15"
    raise fail(folder, f"unknown architecture: pipeline {name!r} (only SD1.5 and SDXL)")


def safetensors_weight_files(part_folder: Path) -> tuple[list[Path], str | None]:
    """A diffusers part's .safetensors weights (all shards) and their variant: the plain files when present,
    else one variant's (`*.fp16.safetensors`, as hub folders ship next to or instead of fp32)."""
    return weight_files(part_folder, "safetensors")


def weight_files(part_folder: Path, extension: str) -> tuple[list[Path], str | None]:
    """`safetensors_weight_files` for any extension (`bin`: the pickled weights of older folders)."""
    by_variant: dict[str | None, list[Path]] = {}
    for file in sorted(part_folder.glob(f"*.{extension}")):
        parts = file.name.split(".")
        by_variant.setdefault(parts[-2] if len(parts) > 2 else None, []).append(file)
    for variant in (None, "fp16", "bf16", *by_variant):
        if variant in by_variant:
            return by_variant[variant], variant
    return [], None


@dataclass
class SafetensorsHeader:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]  # safetensors names: F32, F16, BF16, I64, ...
    metadata: dict[str, str]


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Key names, shapes, dtypes and metadata without reading the weights (also catches truncated files)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes, dtypes = {}, {}
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                shapes[key] = tuple(tensor_slice.get_shape())
                dtypes[key] = tensor_slice.get_dtype()
            return SafetensorsHeader(shapes, dtypes, dict(f.metadata() or {}))
    except SafetensorError as e:
        raise fail(path, f"not a valid .safetensors file (truncated or corrupt: {e})") from None
