"""Single-file checkpoints in the original Stability layout (what AUTOMATIC1111 / ComfyUI load), both directions.

Save: `ldm_layout.components_to_ldm` + our diffusers configs in the safetensors metadata, so a tiny (or otherwise
non-standard) model round-trips exactly. Load: a file we wrote brings its configs; a foreign file uses the shipped
full-size SD1.5 / SDXL configs. The keys and shapes are checked against the layout those configs imply *before* any
weight is read, then diffusers' own single-file converters build the modules (offline, from a local config folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab import atomic
from tunelab.errors import fail
from tunelab.models.components import Architecture, ModelComponents
from tunelab.models.config_folders import (
    MODEL_PARTS,
    TOKENIZER_PADS,
    materialize_config_folder,
    shipped_configs,
)
from tunelab.models.detect import architecture_from_keys, read_safetensors_header
from tunelab.models.ldm_layout import CLIP_G_PREFIX, components_to_ldm
from tunelab.models.tokenizers import clip_tokenizer

METADATA_ARCHITECTURE = "tunelab.architecture"
METADATA_CONFIGS = "tunelab.configs"
# Keys a valid file may lack (older writers) and that no module needs.
OPTIONAL_KEY_SUFFIXES = ("position_ids", "logit_scale")


# ---- configs of in-memory components -------------------------------------------------------------------------


def model_index(architecture: Architecture, scheduler, extra: dict) -> dict:
    index = dict(shipped_configs(architecture)["model_index"])
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    if architecture == "sdxl":
        index["force_zeros_for_empty_prompt"] = extra.get("force_zeros_for_empty_prompt", True)
    return index


def components_configs(components: ModelComponents) -> dict[str, dict]:
    """Diffusers-format configs of every part, as written into a folder's config.json files."""
    configs = {"model_index": model_index(components.architecture, components.scheduler, components.extra)}
    for name, module in components.named_parts().items():
        if hasattr(module.config, "to_dict"):  # transformers
            configs[name] = module.config.to_dict()
        else:  # diffusers FrozenDict
            configs[name] = {"_class_name": type(module).__name__, **dict(module.config)}
    configs["scheduler"] = {"_class_name": type(components.scheduler).__name__, **dict(components.scheduler.config)}
    return json.loads(json.dumps(configs, default=str))  # tuples → lists, dtypes → str: what a folder would hold


# ---- empty (meta) modules: the layout a config implies ----------------------------------------------------------


def empty_components(architecture: Architecture, configs: dict[str, dict]) -> ModelComponents:
    """Modules built from `configs` on the meta device: shapes only, no memory (full-size SDXL in ~0.5 s)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(configs["unet"])
        vae = diffusers.AutoencoderKL.from_config(configs["vae"])
        encoders = [CLIPTextModel(CLIPTextConfig(**_clip_kwargs(configs["text_encoder"])))]
        if architecture == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**_clip_kwargs(configs["text_encoder_2"]))))
    scheduler_cls = getattr(diffusers, configs["scheduler"]["_class_name"])
    return ModelComponents(architecture, unet, vae, encoders, [], scheduler_cls.from_config(configs["scheduler"]))


def _clip_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("architectures", "_name_or_path", "model_type")}


def expected_layout(architecture: Architecture, configs: dict[str, dict]) -> dict[str, tuple[int, ...]]:
    """Original-layout key → shape that a checkpoint with these configs has."""
    return {k: tuple(v.shape) for k, v in components_to_ldm(empty_components(architecture, configs)).items()}


def _same_shape(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    strip = lambda s: tuple(s[:-2]) if len(s) == 4 and s[2:] == (1, 1) else tuple(s)  # noqa: E731  1×1 conv == linear
    return strip(actual) == strip(expected)


def check_layout(path, shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], standard: bool) -> None:
    """One clear error for the first key that is missing or has the wrong shape."""
    what = "the standard full-size layout" if standard else "the configs stored in the file"
    for key, shape in expected.items():
        if key not in shapes:
            if key.endswith(OPTIONAL_KEY_SUFFIXES):
                continue
            raise fail(path, f"missing weight {key} ({what} needs it; is the file complete?)")
        if not _same_shape(shapes[key], shape):
            hint = " (only full-size SD1.5/SDXL files or files written by tunelab can be loaded)" if standard else ""
            raise fail(path, f"{key} has shape {list(shapes[key])}, {what} expects {list(shape)}{hint}")


# ---- save --------------------------------------------------------------------------------------------------------


def cast_floats(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state_dict
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def save_single_file(components: ModelComponents, path: str | Path, dtype: torch.dtype | None = None) -> None:
    tensors = cast_floats(components_to_ldm(components), dtype)
    metadata = {
        "format": "pt",
        METADATA_ARCHITECTURE: components.architecture,
        METADATA_CONFIGS: json.dumps(components_configs(components)),
    }
    atomic.save_safetensors(path, tensors, metadata=metadata)


# ---- load --------------------------------------------------------------------------------------------------------


def read_pickle_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .ckpt/.pt/.bin, unpickled with `weights_only=True` (no arbitrary objects, no code)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  any unpickling failure is a bad file for the user
        raise fail(path, f"cannot load as a weights-only pickle ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    while isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise fail(path, "not a model checkpoint (no state dict inside)")
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def configs_for(path, architecture: Architecture, metadata: dict[str, str]) -> tuple[dict[str, dict], bool]:
    """(configs, standard): the file's own configs when tunelab wrote it, else the shipped full-size ones."""
    if METADATA_CONFIGS not in metadata:
        return shipped_configs(architecture), True
    try:
        configs = json.loads(metadata[METADATA_CONFIGS])
    except ValueError:
        raise fail(path, f"metadata {METADATA_CONFIGS} is not valid JSON") from None
    missing = [p for p in (*MODEL_PARTS[architecture], "scheduler", "model_index") if p not in configs]
    if missing:
        raise fail(path, f"metadata {METADATA_CONFIGS} lacks the config of {', '.join(missing)}")
    return configs, False


def load_single_file(path: Path, *, dtype: torch.dtype, pickle: bool = False) -> ModelComponents:
    if pickle:
        state_dict = read_pickle_state_dict(path)
        layout = validated_layout(path, {k: tuple(v.shape) for k, v in state_dict.items()}, {})
    else:  # names and shapes are checked from the header, before reading gigabytes
        from safetensors.torch import load_file

        header = read_safetensors_header(path)
        layout = validated_layout(path, header.shapes, header.metadata)
        state_dict = load_file(str(path))
    return components_from_ldm(state_dict, layout.architecture, layout.configs, dtype=dtype, source=str(path), path=path)


@dataclass
class Layout:
    architecture: Architecture
    configs: dict[str, dict]
    expected: dict[str, tuple[int, ...]]  # original-layout key → shape


def validated_layout(path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> Layout:
    """Architecture and configs of a single file whose keys/shapes are `shapes`; raises on any mismatch."""
    architecture = architecture_from_keys(shapes, path)
    configs, standard = configs_for(path, architecture, metadata)
    try:
        expected = expected_layout(architecture, configs)
    except (TypeError, ValueError, KeyError) as e:
        raise fail(path, f"stored configs cannot build a model ({type(e).__name__}: {e})") from None
    check_layout(path, shapes, expected, standard)
    return Layout(architecture, configs, expected)


def components_from_ldm(
    state_dict: dict[str, torch.Tensor], architecture: Architecture, configs: dict[str, dict], *, dtype, source="", path=""
) -> ModelComponents:
    """Modules from an original-layout state dict, via diffusers' single-file converters (offline config folder)."""
    import diffusers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = str(materialize_config_folder(architecture, configs))
    common = dict(config=folder, torch_dtype=dtype, local_files_only=True)
    try:
        unet = diffusers.UNet2DConditionModel.from_single_file(state_dict, subfolder="unet", **common)
        vae = diffusers.AutoencoderKL.from_single_file(state_dict, subfolder="vae", **common)
        encoders = [create_diffusers_clip_model_from_ldm(CLIPTextModel, state_dict, subfolder="text_encoder", **common)]
        if architecture == "sdxl":
            encoders.append(
                create_diffusers_clip_model_from_ldm(
                    CLIPTextModelWithProjection, state_dict, subfolder="text_encoder_2", **common
                )
            )
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise fail(path or source, f"diffusers could not convert the checkpoint ({type(e).__name__}: {e})") from None
    scheduler = getattr(diffusers, configs["scheduler"]["_class_name"]).from_config(configs["scheduler"])
    extra = {}
    if architecture == "sdxl":
        extra["force_zeros_for_empty_prompt"] = configs["model_index"].get("force_zeros_for_empty_prompt", True)
        if CLIP_G_PREFIX + "logit_scale" in state_dict:
            extra["logit_scale"] = float(state_dict[CLIP_G_PREFIX + "logit_scale"])
    tokenizers = [clip_tokenizer(pad_token=pad) for pad in TOKENIZER_PADS[architecture].values()]
    for module in (unet, vae, *encoders):
        module.eval()
    return ModelComponents(architecture, unet, vae, encoders, tokenizers, scheduler, source=source, extra=extra)
