"""Weighted-sum model merge (A1111's checkpoint merger "Weighted sum"): C = (1 − α)·A + α·B, per component.

Users merge a finetune back into its base, often with a different α for the UNet and the text encoders. α = 0
gives A and α = 1 gives B bit for bit; other values are computed in float32 and stored in A's dtype. Any format
`load_model` reads can be an input, any format `save_model` writes can be the output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tunelab.errors import TunelabError, fail
from tunelab.models.components import ModelComponents


@dataclass(frozen=True)
class MergeAlphas:
    """α per component: 0 keeps model A, 1 takes model B."""

    unet: float = 0.5
    text_encoders: float = 0.5
    vae: float = 0.5

    @classmethod
    def from_options(cls, alpha: float, unet: float | None = None, text_encoders: float | None = None,
                     vae: float | None = None) -> "MergeAlphas":
        """One α for everything, overridden per component where given."""
        alphas = cls(
            unet=alpha if unet is None else unet,
            text_encoders=alpha if text_encoders is None else text_encoders,
            vae=alpha if vae is None else vae,
        )
        for name, value in vars(alphas).items():
            if not 0.0 <= value <= 1.0:
                raise TunelabError(f"merge alpha for {name} is {value}: expected a number from 0 to 1")
        return alphas

    def for_part(self, part: str) -> float:
        """`part` as in `ModelComponents.named_parts()`: unet, vae, text_encoder, text_encoder_2."""
        return self.text_encoders if part.startswith("text_encoder") else getattr(self, part)


def weighted_sum(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α)·a + α·b in float32, returned in a's dtype; exactly a at α = 0 and b at α = 1."""
    if alpha == 0.0:
        return a
    if alpha == 1.0:
        return b.to(a.dtype)
    return ((1.0 - alpha) * a.float() + alpha * b.float()).to(a.dtype)


@torch.no_grad()
def merge_models(a: ModelComponents, b: ModelComponents, alphas: MergeAlphas, *, progress: bool = True) -> ModelComponents:
    """Merge B into A **in place** (one model's worth of memory less) and return A."""
    if a.architecture != b.architecture:
        raise TunelabError(f"cannot merge {a.source} ({a.architecture}) with {b.source} ({b.architecture})")
    parts_b = b.named_parts()
    for part, module_a in tqdm(a.named_parts().items(), desc="merging", unit="part", disable=not progress):
        alpha = alphas.for_part(part)
        if alpha == 0.0:
            continue
        state_b = parts_b[part].state_dict()
        for key, tensor_a in module_a.state_dict().items():
            tensor_b = state_b.get(key)
            if tensor_b is None or tensor_b.shape != tensor_a.shape:
                found = "missing" if tensor_b is None else f"shape {tuple(tensor_b.shape)}"
                raise TunelabError(
                    f"cannot merge {part}.{key}: {tuple(tensor_a.shape)} in {a.source}, {found} in {b.source}"
                )
            if tensor_a.is_floating_point():  # integer buffers (e.g. position ids) stay A's
                tensor_a.copy_(weighted_sum(tensor_a, tensor_b.to(tensor_a.device), alpha))
    a.source = f"merge({a.source}, {b.source})"
    return a


def merge_files(
    path_a: str | Path,
    path_b: str | Path,
    out: str | Path,
    alphas: MergeAlphas,
    *,
    dtype: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Load A and B (any format), merge, save: `out` ending in .safetensors → single file, else a diffusers
    folder. Without `dtype` the output keeps A's stored dtype (an fp16 checkpoint stays fp16)."""
    from tunelab.models.info import model_info
    from tunelab.models.io import DTYPES, load_model, parse_dtype, save_model
    from tunelab.models.model_path import resolve_model_path

    out, path_a, path_b = Path(out), resolve_model_path(path_a), resolve_model_path(path_b)
    if out.resolve() in (Path(path_a).resolve(), Path(path_b).resolve()):
        raise fail(out, "output is one of the inputs; write to a new path")
    target_dtype = parse_dtype(dtype) if dtype else DTYPES.get(model_info(path_a, allow_pickle=allow_pickle).dtype)
    a = load_model(path_a, allow_pickle=allow_pickle)
    b = load_model(path_b, allow_pickle=allow_pickle)
    merged = merge_models(a, b, alphas)
    format = "single-file" if out.suffix.lower() == ".safetensors" else "diffusers"
    return save_model(merged, out, format=format, dtype=target_dtype)
