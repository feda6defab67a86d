"""`tunelab info MODEL`: architecture, format, stored dtype and parameter count per component.

Read from safetensors headers where possible (no weights loaded, instant even for SDXL); counts are of the module
parameters (buffers like CLIP's position_ids and OpenCLIP's unused logit_scale are not parameters)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import fail
from tunelab.models.detect import (
    architecture_from_model_index,
    detect_format,
    read_safetensors_header,
    safetensors_weight_files,
)
from tunelab.models.ldm_layout import part_prefixes
from tunelab.models.single_file import OPTIONAL_KEY_SUFFIXES, read_pickle_state_dict, validated_layout

DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}


@dataclass
class ModelInfo:
    path: str
    architecture: str
    format: str
    dtype: str  # the most common float dtype of the stored weights ("fp16 + fp32" style when parts differ)
    parameters: dict[str, int]  # by part name: unet, vae, text_encoder, text_encoder_2

    def lines(self) -> list[str]:
        width = max(map(len, self.parameters)) + 2
        out = [f"path: {self.path}", f"architecture: {self.architecture}", f"format: {self.format}",
               f"dtype: {self.dtype}", "parameters:"]
        out += [f"  {name:<{width}}{count:>15,}" for name, count in self.parameters.items()]
        out.append(f"  {'total':<{width}}{sum(self.parameters.values()):>15,}")
        return out


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
    layout = validated_layout(path, shapes, metadata)
    parameters, part_dtypes = {}, {}
    for part, prefix in part_prefixes(layout.architecture).items():
        keys = [k for k in layout.expected if k.startswith(prefix) and not k.endswith(OPTIONAL_KEY_SUFFIXES)]
        parameters[part] = sum(math.prod(shapes[k]) for k in keys)
        part_dtypes[part] = _most_common(dtypes[k] for k in keys)
    return ModelInfo(str(path), layout.architecture, fmt, _describe(part_dtypes), parameters)


def _folder_info(folder: Path, allow_pickle: bool) -> ModelInfo:
    architecture = architecture_from_model_index(folder)
    parameters, part_dtypes = {}, {}
    for part in part_prefixes(architecture):
        files, _ = safetensors_weight_files(folder / part)
        if not files:  # pickled weights: count from the loaded modules
            from tunelab.models.io import load_model

            components = load_model(folder, allow_pickle=allow_pickle)
            parameters = {n: sum(p.numel() for p in m.parameters()) for n, m in components.named_parts().items()}
            part_dtypes = {n: _torch_dtype_name(next(m.parameters()).dtype) for n, m in components.named_parts().items()}
            break
        headers = [read_safetensors_header(f) for f in files]
        parameters[part] = sum(math.prod(shape) for h in headers for shape in h.shapes.values())
        part_dtypes[part] = _most_common(d for h in headers for d in h.dtypes.values())
    return ModelInfo(str(folder), architecture, "diffusers", _describe(part_dtypes), parameters)


def _torch_dtype_name(dtype) -> str:
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
