"""`tunelab convert IN OUT --to diffusers|single-file [--dtype ...]`."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError, fail
from tunelab.models.info import model_info
from tunelab.models.io import DTYPES, load_model, parse_dtype, save_model
from tunelab.models.model_path import resolve_model_path


def convert_model(src: str | Path, out: str | Path, *, to: str, dtype: str | None = None, allow_pickle: bool = False) -> Path:
    """Load `src`, write it as `to`. Without `dtype`, the output keeps the input's stored dtype (an fp16 file stays
    fp16). The model is loaded in the output dtype (a full-size SDXL in fp32 would need 14 GB); a file of mixed
    dtypes is loaded and written in fp32."""
    src, out = resolve_model_path(src), Path(out)
    if to not in ("diffusers", "single-file"):
        raise TunelabError(f"--to {to!r}: expected 'diffusers' or 'single-file'")
    target_dtype = parse_dtype(dtype) if dtype else _stored_dtype(src, allow_pickle)
    if to == "single-file" and out.suffix.lower() != ".safetensors":
        raise fail(out, "a single file must end in .safetensors")
    if out.resolve() == src.resolve():
        raise fail(out, "output is the input; write to a new path")
    components = load_model(src, dtype=target_dtype, allow_pickle=allow_pickle)
    return save_model(components, out, format=to, dtype=target_dtype)


def _stored_dtype(src: Path, allow_pickle: bool):
    stored = model_info(src, allow_pickle=allow_pickle).dtype
    return DTYPES.get(stored)  # mixed dtypes ("unet fp16, vae fp32") → None: keep each tensor's (fp32) dtype
