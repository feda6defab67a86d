"""`load_model` / `save_model`: the one entry point for model files, whatever their format.

Formats: a diffusers folder, or a single `.safetensors` file in the original Stability layout (AUTOMATIC1111 /
ComfyUI). SD1.5 vs SDXL is detected from the keys (or model_index.json). Pickles (.ckpt/.pt/.bin) can run code when
unpickled, so they are refused unless `allow_pickle=True`, and then read with `torch.load(weights_only=True)`.
Every write is atomic: a single file via `tunelab.atomic`, a folder by building it next to the target and renaming."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Literal

import torch

from tunelab import atomic
from tunelab.errors import TunelabError, fail
from tunelab.models.completeness import check_folder_complete, no_safetensors_error
from tunelab.models.components import ModelComponents
from tunelab.models.config_folders import MODEL_PARTS
from tunelab.models.detect import architecture_from_model_index, detect_format, safetensors_weight_files
from tunelab.models.model_path import resolve_model_path
from tunelab.models.safetensors_stream import write_safetensors
from tunelab.models.single_file import cast_floats, load_single_file, save_single_file
from tunelab.models.stream_save import save_frozen_part, save_single_file_streamed

SaveFormat = Literal["diffusers", "single-file"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PICKLE_REFUSED = "is a pickle file, which can run arbitrary code when loaded; refused (pass --allow-pickle / " \
    "allow_pickle=True to load it with torch.load(weights_only=True), or convert it to .safetensors)"


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'fp32' / 'fp16' / 'bf16' (or a torch dtype, or None) → torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise TunelabError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(path: str | Path, *, dtype: str | torch.dtype | None = None, allow_pickle: bool = False) -> ModelComponents:
    """Load every component of an SD1.5 / SDXL model. `dtype=None` loads float32 (the training dtype on CPU)."""
    path = resolve_model_path(path)  # a trainer step-N folder → the model inside
    dtype = parse_dtype(dtype) or torch.float32
    fmt = detect_format(path)
    if fmt == "pickle" and not allow_pickle:
        raise fail(path, PICKLE_REFUSED)
    with quiet_libraries():
        if fmt == "diffusers":
            return load_diffusers_folder(path, dtype=dtype, allow_pickle=allow_pickle)
        return load_single_file(path, dtype=dtype, pickle=fmt == "pickle")


def load_model_structure(path: str | Path, *, allow_pickle: bool = False) -> ModelComponents:
    """The model's modules on the meta device (shapes, no weights), checked complete from the files' headers: what
    a dry run needs, in seconds and without the model's memory (a pickle has no header: it is loaded)."""
    from tunelab.models.completeness import folder_configs, folder_part_tensors, part_file_tensors
    from tunelab.models.detect import read_safetensors_header
    from tunelab.models.single_file import empty_components, validated_layout

    path = resolve_model_path(path)
    fmt = detect_format(path)
    if fmt == "pickle":
        return load_model(path, allow_pickle=allow_pickle)
    with quiet_libraries():
        if fmt == "single-file":
            header = read_safetensors_header(path)
            layout = validated_layout(path, header.shapes, header.metadata)
            return empty_components(layout.architecture, layout.configs)
        architecture = architecture_from_model_index(path)
        configs = folder_configs(path, MODEL_PARTS[architecture])
        configs["scheduler"] = _read_json(path / "scheduler" / "scheduler_config.json")
        configs["model_index"] = _read_json(path / "model_index.json")
        components = empty_components(architecture, configs)
    for part, module in components.named_parts().items():
        report = folder_part_tensors(module.state_dict(), part_file_tensors(path / part, allow_pickle))
        if not report.complete:
            raise fail(path / part, f"missing weight {report.missing[0]} ({report.describe()}; is the folder complete?)")
    return components


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise fail(path, f"unreadable ({type(e).__name__}: {e})") from None


def load_diffusers_folder(folder: Path, *, dtype: torch.dtype, allow_pickle: bool = False) -> ModelComponents:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    architecture = architecture_from_model_index(folder)
    variants = set()
    for part in MODEL_PARTS[architecture]:
        if not (folder / part).is_dir():
            raise fail(folder, f"diffusers folder has no {part}/")
        files, variant = safetensors_weight_files(folder / part)
        if not files and not allow_pickle:
            # with allow_pickle, diffusers / transformers read .bin weights with torch.load(weights_only=True)
            raise no_safetensors_error(folder / part)
        variants.add(variant)
    kwargs: dict = dict(torch_dtype=dtype, local_files_only=True)
    if len(variants) == 1 and None not in variants:  # e.g. a folder holding only *.fp16.safetensors
        kwargs["variant"] = variants.pop()
    if architecture == "sd15":  # never load a safety checker: not part of the model we train
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline_cls = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
    try:
        pipe = pipeline_cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise fail(folder, f"cannot load diffusers folder ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if architecture == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if architecture == "sdxl" else [])
    extra = {}
    if architecture == "sdxl":
        extra["force_zeros_for_empty_prompt"] = pipe.config.get("force_zeros_for_empty_prompt", True)
    for module in (pipe.unet, pipe.vae, *encoders):
        module.eval()
    components = ModelComponents(architecture, pipe.unet, pipe.vae, encoders, tokenizers, pipe.scheduler,
                                 source=str(folder), extra=extra)
    check_folder_complete(folder, components, allow_pickle)  # the libraries leave a missing weight on meta / random
    return components


def save_model(
    components: ModelComponents,
    path: str | Path,
    *,
    format: SaveFormat = "diffusers",
    dtype: str | torch.dtype | None = None,
    frozen: dict[str, Path] | None = None,
) -> Path:
    """Write `components` as a diffusers folder or an original-layout single file; `dtype` casts float weights
    (None keeps each tensor's dtype). The modules themselves are never modified. `frozen`: parts left on the meta
    device whose weights are in a safetensors file (part name → file), streamed from there (`stream_save`)."""
    path = Path(path)
    dtype = parse_dtype(dtype)
    if format not in ("diffusers", "single-file"):
        raise TunelabError(f"format {format!r}: expected 'diffusers' or 'single-file'")
    with quiet_libraries():
        if format == "single-file" and frozen:
            save_single_file_streamed(components, path, dtype, frozen)
        elif format == "single-file":
            save_single_file(components, path, dtype=dtype)
        else:
            save_diffusers_folder(components, path, dtype=dtype, frozen=frozen)
    return path


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers info logs, per-component progress bars and deprecation chatter while
    loading or saving: the user asked for one model, not seven progress bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def save_diffusers_folder(components: ModelComponents, folder: Path, dtype: torch.dtype | None = None,
                          frozen: dict[str, Path] | None = None) -> None:
    from tunelab.models.single_file import components_configs

    with atomic_folder(folder) as tmp:
        atomic.write_json(tmp / "model_index.json", components_configs(components)["model_index"])
        for name, module in components.named_parts().items():
            if name in (frozen or {}):
                save_frozen_part(module, tmp / name, frozen[name], dtype)
                continue
            if hasattr(module.config, "to_dict"):  # transformers: config.json + model.safetensors
                module.save_pretrained(tmp / name, state_dict=cast_floats(module.state_dict(), dtype))
            else:  # streamed, cast per tensor: a full-size UNet is never held twice
                module.save_config(tmp / name)
                write_safetensors(tmp / name / "diffusion_pytorch_model.safetensors", module.state_dict(),
                                  {"format": "pt"}, dtype=dtype)
        components.scheduler.save_config(tmp / "scheduler")
        for i, tokenizer in enumerate(components.tokenizers):
            tokenizer.save_pretrained(tmp / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}"))


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Build a folder next to `target`, then swap it in. An existing target is replaced only if it is a model
    folder (has model_index.json) — never an unrelated folder given by mistake."""
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / "model_index.json").exists())):
        raise fail(target, "exists and is not a diffusers model folder; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_folder(target.parent, f".{target.name}.", ".tmp")
    try:
        yield tmp
        atomic.plain_modes(tmp)  # never owner-only, whatever the libraries that wrote into it did
        old = None
        if target.exists():  # renamed onto a fresh empty folder, deleted once the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_label(path: str | Path) -> str:
    """A model's short display name (grid columns, infotext "Model:", validation rows): a file's stem, a folder's
    name, and `<run folder>/step-N` for a trainer checkpoint (`…/<run>/checkpoints/step-N[/model]`), so two runs'
    equal step folders are told apart."""
    path = Path(path)
    if path.stem == "model" and path.parent.name.startswith("step-"):
        path = path.parent
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.stem if path.suffix in (".safetensors", ".ckpt", ".pt", ".bin", ".pth") else path.name
