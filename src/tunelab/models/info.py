"""`tunelab info MODEL`: architecture, format, stored dtype, whether every tensor was found, and parameter count
per component.

Read from safetensors headers where possible (no weights loaded, instant even for SDXL); the expected tensors come
from the configs (a single file's layout, or the modules a folder's configs build on the meta device). Counts are of
the module parameters (buffers like CLIP's position_ids and OpenCLIP's unused logit_scale are not parameters)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import fail
from tunelab.models.completeness import (
    PartTensors,
    canonical_key,
    folder_configs,
    folder_part_tensors,
    part_file_tensors,
)
from tunelab.models.config_folders import MODEL_PARTS
from tunelab.models.detect import architecture_from_model_index, detect_format, read_safetensors_header
from tunelab.models.ldm_layout import part_prefixes
from tunelab.models.single_file import (
    OPTIONAL_KEY_SUFFIXES,
    build_modules,
    missing_keys,
    read_pickle_state_dict,
    validated_layout,
)

DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}


@dataclass
class ModelInfo:
    path: str
    architecture: str
    format: str
    dtype: str  # the most common float dtype of the stored weights ("fp16 + fp32" style when parts differ)
    parameters: dict[str, int]  # by part name: unet, vae, text_encoder, text_encoder_2 (found tensors only)
    tensors: dict[str, PartTensors]  # by part name: expected tensors, and which were not found

    def lines(self) -> list[str]:
        width = max(map(len, self.parameters)) + 2
        out = [f"path: {self.path}", f"architecture: {self.architecture}", f"format: {self.format}",
               f"dtype: {self.dtype}", "tensors:"]
        out += [f"  {name:<{width}}{report.describe()}" for name, report in self.tensors.items()]
        out.append("parameters:")
        out += [f"  {name:<{width}}{count:>15,}" for name, count in self.parameters.items()]
        out.append(f"  {'total':<{width}}{sum(self.parameters.values()):>15,}")
        return out

    @property
    def complete(self) -> bool:
        return all(report.complete for report in self.tensors.values())

    def problem(self) -> str | None:
        """One line naming the first missing tensor, or None when every part is complete."""
        for part, report in self.tensors.items():
            if not report.complete:
                return f"missing weight {report.missing[0]} ({part}: {report.describe()})"
        return None


def model_info(path: str | Path, *, allow_pickle: bool = False) -> ModelInfo:
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "diffusers":
        return _folder_info(path, allow_pickle)
    if fmt == "pickle":
        from tunelab.models.io import PICKLE_REFUSED

        if not allow_pickle:
            raise fail(path, PICKLE_REFUSED)
        state_dict, metadata = read_pickle_state_dict(path), {}
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        dtypes = {k: _torch_dtype_name(v.dtype) for k, v in state_dict.items()}
    else:
        header = read_safetensors_header(path)
        shapes, dtypes, metadata = header.shapes, header.dtypes, header.metadata
    layout = validated_layout(path, shapes, metadata, complete=False)  # missing tensors are reported, not raised
    parameters, part_dtypes, tensors = {}, {}, {}
    for part, prefix in part_prefixes(layout.architecture).items():
        expected = {k: s for k, s in layout.expected.items() if k.startswith(prefix)}
        tensors[part] = PartTensors(sum(not k.endswith(OPTIONAL_KEY_SUFFIXES) for k in expected),
                                    missing_keys(shapes, expected))
        keys = [k for k in expected if k in shapes and not k.endswith(OPTIONAL_KEY_SUFFIXES)]
        parameters[part] = sum(math.prod(shapes[k]) for k in keys)
        part_dtypes[part] = _most_common(dtypes[k] for k in keys)
    return ModelInfo(str(path), layout.architecture, fmt, _describe(part_dtypes), parameters, tensors)


def _folder_info(folder: Path, allow_pickle: bool) -> ModelInfo:
    from tunelab.models.io import PICKLE_REFUSED

    architecture = architecture_from_model_index(folder)
    parts = MODEL_PARTS[architecture]
    for part in parts:
        if not (folder / part).is_dir():
            raise fail(folder, f"diffusers folder has no {part}/")
    try:
        with torch.device("meta"):  # shapes only: what the folder's configs say each module holds
            modules = build_modules(architecture, folder_configs(folder, parts))
    except (TypeError, ValueError, KeyError) as e:
        raise fail(folder, f"configs cannot build a model ({type(e).__name__}: {e})") from None
    parameters, part_dtypes, tensors = {}, {}, {}
    for part in parts:
        stored = part_file_tensors(folder / part, allow_pickle)
        dtype_of = {canonical_key(k): _torch_dtype_name(dtype) for k, (_, dtype) in stored.items()}
        if not stored and not allow_pickle and any((folder / part).glob("*.bin")):
            raise fail(folder / part, PICKLE_REFUSED.replace("is a pickle file", "stores its weights as pickle (.bin)"))
        expected = modules[part].state_dict()
        tensors[part] = folder_part_tensors(expected, stored)
        names, missing = {n for n, _ in modules[part].named_parameters()}, set(tensors[part].missing)
        found = [k for k in expected if k in names and k not in missing]
        parameters[part] = sum(expected[k].numel() for k in found)
        part_dtypes[part] = _most_common(dtype_of[canonical_key(k)] for k in found)
    return ModelInfo(str(folder), architecture, "diffusers", _describe(part_dtypes), parameters, tensors)


def _torch_dtype_name(dtype) -> str:
    """torch dtypes (unpickled tensors) in safetensors' names; safetensors names pass through."""
    return {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}.get(str(dtype), str(dtype))


def _most_common(names) -> str:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    best = max(counts, key=counts.get) if counts else "?"
    return DTYPE_NAMES.get(best, best.lower())


def _describe(part_dtypes: dict[str, str]) -> str:
    distinct = sorted(set(part_dtypes.values()))
    if len(distinct) == 1:
        return distinct[0]
    return ", ".join(f"{part} {dtype}" for part, dtype in part_dtypes.items())
