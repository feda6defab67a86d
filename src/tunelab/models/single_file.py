"""Single-file checkpoints in the original Stability layout (what AUTOMATIC1111 / ComfyUI load), both directions.

Save: `ldm_layout.components_to_ldm` + our diffusers configs in the safetensors metadata, so a tiny (or otherwise
non-standard) model round-trips exactly. Load: a file we wrote brings its configs; a foreign file uses the shipped
full-size SD1.5 / SDXL configs. The keys and shapes are checked against the layout those configs imply *before* any
weight is read; then `ldm_layout.ldm_to_parts` (the inverse of the save mapping, one explicit prefix per part) names
every tensor, and the modules, built empty from the configs, take them as they are. No shape-based guess of which
text encoder a key block belongs to (diffusers' converters guess, and swap two encoders of the same width)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab import atomic
from tunelab.errors import fail
from tunelab.models.components import Architecture, ModelComponents
from tunelab.models.config_folders import MODEL_PARTS, TOKENIZER_PADS, shipped_configs
from tunelab.models.completeness import check_nothing_on_meta
from tunelab.models.detect import architecture_from_keys, read_safetensors_header
from tunelab.models.ldm_layout import CLIP_G_PREFIX, components_to_ldm, is_non_weight, ldm_to_parts, part_of_key
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


def build_modules(architecture: Architecture, configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    """The modules `configs` describe, by part name; the caller picks the device context (meta / empty weights)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    modules = {
        "unet": diffusers.UNet2DConditionModel.from_config(configs["unet"]),
        "vae": diffusers.AutoencoderKL.from_config(configs["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**_clip_kwargs(configs["text_encoder"]))),
    }
    if architecture == "sdxl":
        modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**_clip_kwargs(configs["text_encoder_2"])))
    return modules


def empty_components(architecture: Architecture, configs: dict[str, dict]) -> ModelComponents:
    """Modules built from `configs` on the meta device: shapes only, no memory (full-size SDXL in ~0.5 s)."""
    import diffusers

    with torch.device("meta"):
        modules = build_modules(architecture, configs)
    encoders = [modules[p] for p in ("text_encoder", "text_encoder_2") if p in modules]
    scheduler_cls = getattr(diffusers, configs["scheduler"]["_class_name"])
    return ModelComponents(architecture, modules["unet"], modules["vae"], encoders, [],
                           scheduler_cls.from_config(configs["scheduler"]))


def _clip_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("architectures", "_name_or_path", "model_type")}


def expected_layout(architecture: Architecture, configs: dict[str, dict]) -> dict[str, tuple[int, ...]]:
    """Original-layout key → shape that a checkpoint with these configs has."""
    return {k: tuple(v.shape) for k, v in components_to_ldm(empty_components(architecture, configs)).items()}


def _same_shape(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    strip = lambda s: tuple(s[:-2]) if len(s) == 4 and s[2:] == (1, 1) else tuple(s)  # noqa: E731  1×1 conv == linear
    return strip(actual) == strip(expected)


def missing_keys(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Expected keys the file lacks (buffers a valid file may leave out are not counted)."""
    return [k for k in expected if k not in shapes and not k.endswith(OPTIONAL_KEY_SUFFIXES)]


def unexpected_keys(shapes, expected, architecture: Architecture) -> list[str]:
    """Keys inside a part's prefix that its configs have no place for: weights the configs do not describe, which
    loading would silently drop. Keys outside every part (EMA copies, schedule buffers) are training state."""
    return [k for k in shapes
            if k not in expected and part_of_key(k, architecture) is not None and not is_non_weight(k)]


def check_layout(path, shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], standard: bool,
                 architecture: Architecture, complete: bool = True) -> None:
    """One clear error for the first key that has the wrong shape, is not part of the layout, or (when `complete`)
    is missing."""
    what = "the standard full-size layout" if standard else "the configs stored in the file"
    for key, shape in expected.items():
        if key in shapes and not _same_shape(shapes[key], shape):
            hint = " (only full-size SD1.5/SDXL files or files written by tunelab can be loaded)" if standard else ""
            raise fail(path, f"{key} has shape {list(shapes[key])}, {what} expects {list(shape)}{hint}")
    unexpected = unexpected_keys(shapes, expected, architecture)
    if unexpected:
        raise fail(path, f"unexpected weight {unexpected[0]} ({what} has no place for it"
                         f"{f'; {len(unexpected) - 1} more' if len(unexpected) > 1 else ''})")
    missing = missing_keys(shapes, expected)
    if complete and missing:
        raise fail(path, f"missing weight {missing[0]} (expected by {what}; is the file complete?"
                         f"{f' {len(missing) - 1} more missing' if len(missing) > 1 else ''})")


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


def validated_layout(path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], complete: bool = True) -> Layout:
    """Architecture and configs of a single file whose keys/shapes are `shapes`; raises on any mismatch (on a
    missing key only when `complete`: `tunelab info` reports those per part instead)."""
    architecture = architecture_from_keys(shapes, path)
    configs, standard = configs_for(path, architecture, metadata)
    try:
        expected = expected_layout(architecture, configs)
    except (TypeError, ValueError, KeyError) as e:
        raise fail(path, f"stored configs cannot build a model ({type(e).__name__}: {e})") from None
    check_layout(path, shapes, expected, standard, architecture, complete)
    return Layout(architecture, configs, expected)


def components_from_ldm(
    state_dict: dict[str, torch.Tensor], architecture: Architecture, configs: dict[str, dict], *, dtype, source="", path=""
) -> ModelComponents:
    """Modules from an original-layout state dict: our own key mapping (`ldm_to_parts`), modules built with empty
    weights from `configs`, each tensor assigned (cast to `dtype`, not copied otherwise); then checked complete."""
    import diffusers
    from accelerate import init_empty_weights

    where = path or source
    try:
        parts, unplaced = ldm_to_parts(state_dict, architecture, configs)
    except (ValueError, KeyError, TypeError) as e:
        raise fail(where, f"stored configs do not describe a single-file layout ({type(e).__name__}: {e})") from None
    if unplaced:
        raise fail(where, f"unexpected weight {unplaced[0]} (no module of the model has a place for it)")
    with init_empty_weights():  # parameters on meta until assigned; buffers (CLIP position_ids) real
        modules = build_modules(architecture, configs)
    for name, module in modules.items():
        assign_weights(module, parts[name], dtype, where, name)
        module.eval()
    scheduler = getattr(diffusers, configs["scheduler"]["_class_name"]).from_config(configs["scheduler"])
    extra = {}
    if architecture == "sdxl":
        extra["force_zeros_for_empty_prompt"] = configs["model_index"].get("force_zeros_for_empty_prompt", True)
        if CLIP_G_PREFIX + "logit_scale" in state_dict:
            extra["logit_scale"] = float(state_dict[CLIP_G_PREFIX + "logit_scale"])
    tokenizers = [clip_tokenizer(pad_token=pad) for pad in TOKENIZER_PADS[architecture].values()]
    encoders = [modules[p] for p in ("text_encoder", "text_encoder_2") if p in modules]
    components = ModelComponents(architecture, modules["unet"], modules["vae"], encoders, tokenizers, scheduler,
                                 source=source, extra=extra)
    check_nothing_on_meta(components, where)
    return components


def assign_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], dtype, path, part: str) -> None:
    """Every tensor of `module`'s state dict from `tensors` (exactly those keys, same shapes), floats cast to
    `dtype`; the module takes the tensors themselves (`assign=True`: no second copy of the model in memory)."""
    expected = module.state_dict()
    if not any(k.startswith("text_model.") for k in expected):  # transformers ≥ 5.6 CLIPTextModel has no such level
        tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    for key, reference in expected.items():
        if key not in tensors:
            raise fail(path, f"{part}: weight {key} was not found in the file")
        if tensors[key].shape != reference.shape:
            raise fail(path, f"{part}: weight {key} has shape {list(tensors[key].shape)}, the model expects "
                             f"{list(reference.shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise fail(path, f"{part}: unexpected weight {extra[0]} (the model has no place for it)")
    cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    module.load_state_dict(cast, strict=True, assign=True)
