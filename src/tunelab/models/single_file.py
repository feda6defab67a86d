"""Single-file checkpoints in the original Stability layout (what AUTOMATIC1111 / ComfyUI load), both directions.

Save: `ldm_layout.components_to_ldm` + our diffusers configs in the safetensors metadata, so a tiny (or otherwise
non-standard) model round-trips exactly. Load: a file we wrote brings its configs; a foreign file uses the shipped
full-size SD1.5 / SDXL configs. The keys and shapes are checked against the layout those configs imply *before* any
weight is read; then `ldm_layout.ldm_to_parts` (the inverse of the save mapping, one explicit prefix per part) names
every tensor, and the modules, built empty from the configs, take them one at a time as they are read (never two
copies of the model in memory; both directions stream through `safetensors_stream`). No shape-based guess of which
text encoder a key block belongs to (diffusers' converters guess, and swap two encoders of the same width)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from tunelab.errors import fail
from tunelab.models.components import Architecture, ModelComponents
from tunelab.models.config_folders import MODEL_PARTS, TOKENIZER_PADS, shipped_configs
from tunelab.models.completeness import check_nothing_on_meta
from tunelab.models.detect import architecture_from_keys, read_safetensors_header
from tunelab.models.ldm_layout import CLIP_G_PREFIX, LdmToParts, components_to_ldm, is_non_weight, part_of_key
from tunelab.models.safetensors_stream import SafetensorsReader, drop_from_page_cache, write_safetensors
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
    metadata = {
        "format": "pt",
        METADATA_ARCHITECTURE: components.architecture,
        METADATA_CONFIGS: json.dumps(components_configs(components)),
    }
    write_safetensors(path, components_to_ldm(components), metadata=metadata, dtype=dtype)  # cast per tensor


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
    """Names and shapes are checked from the header, before any weight is read; then the tensors are read one at a
    time, each converted and assigned into a module built empty (peak memory: the model plus one tensor)."""
    if pickle:  # torch.load has to unpickle everything at once; it is then handed over tensor by tensor
        tensors = read_pickle_state_dict(path)
        source = TensorSource({k: tuple(v.shape) for k, v in tensors.items()}, tensors.pop)
        layout = validated_layout(path, source.shapes, {})
        return components_from_ldm(source, layout.architecture, layout.configs, dtype=dtype, source=str(path), path=path)
    with SafetensorsReader(path) as reader:
        layout = validated_layout(path, {k: reader.shape(k) for k in reader.keys()}, reader.metadata)
        source = TensorSource({k: reader.shape(k) for k in reader.keys()}, lambda key: reader.read(key, dtype),
                              sum(reader.nbytes(k) for k in reader.keys()), reader.nbytes)
        components = components_from_ldm(source, layout.architecture, layout.configs, dtype=dtype, source=str(path),
                                          path=path)
    drop_from_page_cache(path)
    return components


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


@dataclass
class TensorSource:
    """Original-layout tensors by name, handed over one at a time (`read` is called once per key)."""

    shapes: dict[str, tuple[int, ...]]
    read: Callable[[str], torch.Tensor]
    total_bytes: int = 0  # for the progress bar; 0 = count tensors instead
    nbytes: Callable[[str], int] | None = None

    @classmethod
    def of(cls, state_dict: dict[str, torch.Tensor]) -> "TensorSource":
        return cls({k: tuple(v.shape) for k, v in state_dict.items()}, state_dict.__getitem__)


def components_from_ldm(
    tensors: TensorSource | dict[str, torch.Tensor], architecture: Architecture, configs: dict[str, dict], *, dtype,
    source="", path="",
) -> ModelComponents:
    """Modules from original-layout tensors: our own key mapping (`LdmToParts`), modules built with empty weights
    from `configs`. Every name and shape is checked first (on meta stand-ins), then each tensor is read, converted,
    cast to `dtype` and assigned, and dropped before the next is read; finally the model is checked complete."""
    import diffusers
    from accelerate import init_empty_weights

    if isinstance(tensors, dict):
        tensors = TensorSource.of(tensors)
    where = path or source
    to_parts = LdmToParts(architecture, configs)
    try:
        parts, unplaced = to_parts({k: torch.empty(s, device="meta") for k, s in tensors.shapes.items()})
    except (ValueError, KeyError, TypeError) as e:
        raise fail(where, f"stored configs do not describe a single-file layout ({type(e).__name__}: {e})") from None
    if unplaced:
        raise fail(where, f"unexpected weight {unplaced[0]} (no module of the model has a place for it)")
    with init_empty_weights():  # parameters on meta until assigned; buffers (CLIP position_ids) real
        modules = build_modules(architecture, configs)
    names = {name: check_part_names(module, parts[name], where, name) for name, module in modules.items()}
    extra = {}
    if architecture == "sdxl":
        extra["force_zeros_for_empty_prompt"] = configs["model_index"].get("force_zeros_for_empty_prompt", True)
    logit_scale = CLIP_G_PREFIX + "logit_scale"
    wanted = [k for k in tensors.shapes  # keys outside the parts (EMA, training state) and non-weights: never read
              if part_of_key(k, architecture) is not None and (not is_non_weight(k) or k == logit_scale)]
    with tqdm(total=tensors.total_bytes or len(wanted), unit="B" if tensors.total_bytes else " tensors",
              unit_scale=True, desc="loading", disable=None, leave=False) as bar:
        for key in wanted:
            tensor = tensors.read(key)
            if key == logit_scale:
                extra["logit_scale"] = float(tensor)
            converted, _ = to_parts({key: tensor})
            del tensor  # the file's copy goes as soon as the converted one is assigned
            for part, named in converted.items():
                for name, value in named.items():
                    put_tensor(modules[part], names[part][name], value, dtype)
            bar.update(tensors.nbytes(key) if tensors.nbytes and tensors.total_bytes else 1)
    for module in modules.values():
        module.eval()
    scheduler = getattr(diffusers, configs["scheduler"]["_class_name"]).from_config(configs["scheduler"])
    tokenizers = [clip_tokenizer(pad_token=pad) for pad in TOKENIZER_PADS[architecture].values()]
    encoders = [modules[p] for p in ("text_encoder", "text_encoder_2") if p in modules]
    components = ModelComponents(architecture, modules["unet"], modules["vae"], encoders, tokenizers, scheduler,
                                 source=source, extra=extra)
    check_nothing_on_meta(components, where)
    return components


def check_part_names(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path, part: str) -> dict[str, str]:
    """Every tensor of `module`'s state dict is among `tensors` (same shape) and nothing else is; returns the
    module's name of each key (transformers ≥ 5.6 CLIPTextModel has no `text_model.` level, files keep it)."""
    expected = module.state_dict()
    drop_level = not any(k.startswith("text_model.") for k in expected)
    names = {k: k.removeprefix("text_model.") if drop_level else k for k in tensors}
    given = {names[k]: v for k, v in tensors.items()}
    for key, reference in expected.items():
        if key not in given:
            raise fail(path, f"{part}: weight {key} was not found in the file")
        if given[key].shape != reference.shape:
            raise fail(path, f"{part}: weight {key} has shape {list(given[key].shape)}, the model expects "
                             f"{list(reference.shape)}")
    extra = sorted(set(given) - set(expected))
    if extra:
        raise fail(path, f"{part}: unexpected weight {extra[0]} (the model has no place for it)")
    return names


def put_tensor(module: torch.nn.Module, name: str, tensor: torch.Tensor, dtype) -> None:
    """Assign one parameter or buffer (floats cast to `dtype`): the module takes the tensor itself, no copy."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    tensor = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=owner._parameters[leaf].requires_grad)
    else:
        owner._buffers[leaf] = tensor


def assign_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], dtype, path, part: str) -> None:
    """Every tensor of `module`'s state dict from `tensors` (exactly those keys, same shapes), floats cast to
    `dtype`, each assigned as it is (no second copy of the model in memory)."""
    names = check_part_names(module, tensors, path, part)
    for key, tensor in tensors.items():
        put_tensor(module, names[key], tensor, dtype)
