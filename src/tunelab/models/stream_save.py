"""Writing a model whose frozen parts are not in memory: their tensors go from the file that holds them (a
`train.offload` file) into the output one at a time, so writing a checkpoint never loads, e.g., SDXL's 1.6 GB of
frozen text encoders back just to write them out unchanged (the process peak stays at the training step's).

A frozen part is a module left on the `meta` device (structure, no storage) plus a safetensors file with its state
dict. Diffusers folder: the part's config as the library writes it, its weights file written key for key from that
file. Single file: the original-layout conversion (`ldm_layout.components_to_ldm`, renames, transposes, q/k/v
concatenation) runs unchanged on the meta tensors while `MetaRecipes` remembers how each meta tensor was made; each
output tensor is then made again from real tensors read from the file, right before its bytes are written."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from tunelab import atomic
from tunelab.models.components import ModelComponents
from tunelab.models.safetensors_stream import NAMES, SafetensorsReader, tensor_bytes

TENSORS_FILE = {"transformers": "model.safetensors", "diffusers": "diffusion_pytorch_model.safetensors"}


class MetaRecipes(TorchFunctionMode):
    """While active, every torch call that returns a meta tensor is remembered with its inputs, so the same tensor
    can be made again later from real inputs (`materialise`). Calls on real tensors run as usual."""

    def __init__(self):
        super().__init__()
        self.recipes: dict[int, tuple] = {}  # id(meta tensor) -> (func, args, kwargs, the tensor: keeps the id unique)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.device.type == "meta":
            self.recipes[id(out)] = (func, args, kwargs, out)
        return out

    def materialise(self, tensor: torch.Tensor, leaf: Callable[[torch.Tensor], torch.Tensor | None]) -> torch.Tensor:
        """`tensor` made from real values: `leaf(t)` gives the real value of a meta tensor that was not computed
        (a module's parameter or buffer), or None for one whose recipe is to be replayed."""
        if tensor.device.type != "meta":
            return tensor
        value = leaf(tensor)
        if value is not None:
            return value
        if id(tensor) not in self.recipes:
            raise ValueError(f"a meta tensor of shape {list(tensor.shape)} has neither a source nor a recipe")
        func, args, kwargs, _ = self.recipes[id(tensor)]
        real = lambda a: self.materialise(a, leaf) if isinstance(a, torch.Tensor) else a  # noqa: E731
        kwargs = {k: ("cpu" if k == "device" and torch.device(v).type == "meta" else v) for k, v in kwargs.items()}
        return func(*tree_map(real, args), **tree_map(real, kwargs))


def module_leaves(module: torch.nn.Module, reader: SafetensorsReader) -> dict[int, Callable[[], torch.Tensor]]:
    """id(parameter or buffer of a meta module) → reads its value from the part's file (an offload file: state-dict
    keys, and every buffer under `buffer:<name>`)."""
    leaves = {id(p): (lambda key=name: reader.read(key)) for name, p in module.named_parameters()}
    leaves.update({id(b): (lambda key=f"buffer:{name}": reader.read(key)) for name, b in module.named_buffers()})
    return leaves


def write_planned_safetensors(target: Path, planned: Mapping[str, torch.Tensor],
                              materialise: Callable[[str, torch.Tensor], torch.Tensor], metadata: dict[str, str] | None,
                              dtype: torch.dtype | None) -> None:
    """A safetensors file of `planned` (meta tensors give only shape and dtype: `materialise(key, tensor)` makes
    each one real when its bytes are due), floats cast to `dtype`; one tensor in memory at a time."""
    stored = lambda t: dtype if dtype is not None and t.is_floating_point() else t.dtype  # noqa: E731
    header: dict[str, dict] = {}
    offset = 0
    for key, tensor in planned.items():
        size = tensor.numel() * stored(tensor).itemsize
        header[key] = {"dtype": NAMES[stored(tensor)], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with atomic.atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in tensor_bytes((materialise(k, t) for k, t in planned.items()), dtype):
            f.write(chunk)


def save_frozen_part(module: torch.nn.Module, folder: Path, source: Path, dtype: torch.dtype | None) -> None:
    """One part of a diffusers folder (config + weights), its weights copied tensor by tensor from `source`."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = "transformers" if hasattr(module.config, "to_dict") else "diffusers"
    if kind == "transformers":
        module.save_pretrained(folder, state_dict={})  # config.json exactly as with weights; no weights file
    else:
        module.save_config(folder)
    planned = module.state_dict()  # meta tensors under the keys the library writes
    with SafetensorsReader(source) as reader:
        write_planned_safetensors(folder / TENSORS_FILE[kind], planned, lambda key, _: reader.read(key),
                                  {"format": "pt"}, dtype)


def save_single_file_streamed(components: ModelComponents, path: Path, dtype: torch.dtype | None,
                              frozen: Mapping[str, Path]) -> None:
    """The original-layout single file, frozen parts (`frozen`: part name → file) streamed from their files."""
    from tunelab.models.ldm_layout import components_to_ldm
    from tunelab.models.single_file import METADATA_ARCHITECTURE, METADATA_CONFIGS, components_configs

    parts = components.named_parts()
    readers = {name: SafetensorsReader(source) for name, source in frozen.items()}
    try:
        leaves: dict[int, Callable[[], torch.Tensor]] = {}
        for name, reader in readers.items():
            leaves.update(module_leaves(parts[name], reader))
        recipes = MetaRecipes()
        with recipes:
            planned = components_to_ldm(components)
        metadata = {"format": "pt", METADATA_ARCHITECTURE: components.architecture,
                    METADATA_CONFIGS: json.dumps(components_configs(components))}
        leaf = lambda t: leaves[id(t)]() if id(t) in leaves else None  # noqa: E731
        write_planned_safetensors(path, planned, lambda _, t: recipes.materialise(t, leaf), metadata, dtype)
    finally:
        for reader in readers.values():
            reader.close()
