"""Diffusers-format config folders (configs + tokenizer files, no weights) for loading single files offline.

diffusers' `from_single_file(..., config=<folder>)` and our own loader read the model configs from such a folder.
The package ships the real SD1.5 / SDXL configs as JSON (`models/configs/<arch>/`); the tokenizer files are derived
from the CLIP BPE vocabulary at runtime, so the folder is materialised once into a cache directory
(`$TUNELAB_CACHE/configs/`, default `~/.cache/tunelab/configs/`). A file tunelab wrote carries its own configs in its
safetensors metadata (tiny models); those get a folder of their own, named by a hash of the configs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import resources
from pathlib import Path

from tunelab import atomic
from tunelab.models.components import Architecture
from tunelab.models.tokenizers import EOS, write_tokenizer_files

# Component folders per architecture, in ModelComponents.named_parts() order (+ scheduler).
MODEL_PARTS = {
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
    "sd15": ("unet", "vae", "text_encoder"),
}
# Pad token of each tokenizer folder (SDXL's 2nd tokenizer, OpenCLIP bigG, pads with "!").
TOKENIZER_PADS = {"sdxl": {"tokenizer": EOS, "tokenizer_2": "!"}, "sd15": {"tokenizer": EOS}}


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab")


def _config_file_name(part: str) -> str:
    return "scheduler_config.json" if part == "scheduler" else "config.json"


def shipped_configs(architecture: Architecture) -> dict[str, dict]:
    """The real full-size configs shipped in the package: {"model_index", "unet", "vae", ..., "scheduler"}."""
    root = resources.files("tunelab.models").joinpath("configs", architecture)
    configs = {"model_index": json.loads(root.joinpath("model_index.json").read_text())}
    for part in (*MODEL_PARTS[architecture], "scheduler"):
        configs[part] = json.loads(root.joinpath(part, _config_file_name(part)).read_text())
    return configs


def materialize_config_folder(architecture: Architecture, configs: dict[str, dict]) -> Path:
    """A diffusers-format folder holding `configs` and the tokenizer files; created once, reused afterwards.

    Built in a temp folder and renamed into place, so a parallel process never sees a half-written folder."""
    blob = json.dumps({"architecture": architecture, **configs}, sort_keys=True).encode()
    target = cache_dir() / "configs" / f"{architecture}-{hashlib.sha256(blob).hexdigest()[:16]}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_folder(target.parent, f".{target.name}.")
    try:
        (tmp / "model_index.json").write_text(json.dumps(configs["model_index"], indent=2))
        for part in (*MODEL_PARTS[architecture], "scheduler"):
            (tmp / part).mkdir()
            (tmp / part / _config_file_name(part)).write_text(json.dumps(configs[part], indent=2))
        for folder, pad in TOKENIZER_PADS[architecture].items():
            write_tokenizer_files(tmp / folder, pad_token=pad)
        os.replace(tmp, target)
    except OSError:
        if not (target / "model_index.json").is_file():  # lost a race is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def config_folder(architecture: Architecture) -> Path:
    """The offline config folder of the real SD1.5 / SDXL model (for foreign single files)."""
    return materialize_config_folder(architecture, shipped_configs(architecture))
