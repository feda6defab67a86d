"""Writing a model whose frozen parts are not in memory: their tensors go from the file that holds them (a
`train.offload` file) into the output one at a time, so writing a checkpoint never loads, e.g., SDXL's 1.6 GB of
frozen text encoders back just to write them out unchanged (the process peak stays at the training step's).

A frozen part is a module left on the `meta` device (structure, no storage) plus a safetensors file with its state
dict. Diffusers folder: the part's config as the library writes it, its weights file written key for key from that
file. Single file: the original-layout conversion (`ldm_layout.components_to_ldm`, renames, transposes, q/k/v
concatenation) runs unchanged on the meta tensors while `MetaRecipes` remembers how each meta tensor was made; each
output tensor is then made again from real tensors read from the file, right before its bytes are written.

A tensor stored as it is in the file (every one of a diffusers part, the renamed ones of a single file) is copied a
few MB at a time, cast on the way: the largest tensor (SDXL's CLIP-G token embedding, 253 MB in fp32) never sits
in memory whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from tunelab.errors import fail
from tunelab.models.components import ModelComponents
from tunelab.models.safetensors_stream import SafetensorsReader, tensor_bytes, write_safetensors

TENSORS_FILE = {"transformers": "model.safetensors", "diffusers": "diffusion_pytorch_model.safetensors"}
CHUNK_BYTES = 1 << 20  # small next to any model: the checkpoint adds ~nothing to the training peak
Leaf = tuple[SafetensorsReader, str]  # where a frozen module's parameter or buffer is stored


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

    def stored_as(self, tensor: torch.Tensor, leaves: dict[int, Leaf]) -> Leaf | None:
        """Where `tensor`'s values lie as they are (a leaf, or a detached alias of one), else None."""
        while id(tensor) not in leaves:
            recipe = self.recipes.get(id(tensor))
            if recipe is None or getattr(recipe[0], "__name__", "") != "detach":
                return None
            tensor = recipe[1][0]
        return leaves[id(tensor)]

    def materialise(self, tensor: torch.Tensor, leaves: dict[int, Leaf]) -> torch.Tensor:
        """`tensor` made from real values: a leaf (a frozen module's parameter or buffer) is read from its file,
        anything else made again by its recipe."""
        if tensor.device.type != "meta":
            return tensor
        if id(tensor) in leaves:
            reader, key = leaves[id(tensor)]
            return reader.read(key)
        if id(tensor) not in self.recipes:
            raise ValueError(f"a meta tensor of shape {list(tensor.shape)} has neither a source nor a recipe")
        func, args, kwargs, _ = self.recipes[id(tensor)]
        real = lambda a: self.materialise(a, leaves) if isinstance(a, torch.Tensor) else a  # noqa: E731
        kwargs = {k: ("cpu" if k == "device" and torch.device(v).type == "meta" else v) for k, v in kwargs.items()}
        return func(*tree_map(real, args), **tree_map(real, kwargs))


def module_leaves(module: torch.nn.Module, reader: SafetensorsReader) -> dict[int, Leaf]:
    """id(parameter or buffer of a meta module) → where the part's file holds it (an offload file: state-dict keys,
    and every buffer under `buffer:<name>`)."""
    leaves = {id(p): (reader, name) for name, p in module.named_parameters()}
    leaves.update({id(b): (reader, f"buffer:{name}") for name, b in module.named_buffers()})
    return leaves


def file_chunks(leaf: Leaf, dtype: torch.dtype | None) -> Iterator[memoryview]:
    """The bytes of a stored tensor as the output holds it (floats cast to `dtype`), read CHUNK_BYTES at a time
    into one reused buffer (each chunk is written before the next is read)."""
    reader, key = leaf
    stored = reader.dtype(key)
    target = dtype if dtype is not None and stored.is_floating_point else stored
    begin, end = reader.entries[key]["data_offsets"]
    reader.file.seek(reader.data_start + begin)
    buffer = torch.empty(min(CHUNK_BYTES, end - begin), dtype=torch.uint8)
    step = max(1, len(buffer) // stored.itemsize) * stored.itemsize
    for offset in range(0, end - begin, step):
        chunk = buffer[: min(step, end - begin - offset)]
        if reader.file.readinto(memoryview(chunk.numpy())) != len(chunk):
            raise fail(reader.path, f"{key}: file ends inside the tensor (truncated)")
        values = chunk.view(stored)
        yield memoryview((values if target == stored else values.to(target)).view(torch.uint8).numpy())


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
        write_safetensors(folder / TENSORS_FILE[kind], planned, {"format": "pt"}, dtype,
                          chunks=lambda key, _: file_chunks((reader, key), dtype))


def save_single_file_streamed(components: ModelComponents, path: Path, dtype: torch.dtype | None,
                              frozen: Mapping[str, Path]) -> None:
    """The original-layout single file, frozen parts (`frozen`: part name → file) streamed from their files."""
    from tunelab.models.ldm_layout import components_to_ldm
    from tunelab.models.single_file import METADATA_ARCHITECTURE, METADATA_CONFIGS, components_configs

    parts = components.named_parts()
    readers = {name: SafetensorsReader(source) for name, source in frozen.items()}
    try:
        leaves: dict[int, Leaf] = {}
        for name, reader in readers.items():
            leaves.update(module_leaves(parts[name], reader))
        recipes = MetaRecipes()
        with recipes:
            planned = components_to_ldm(components)
        metadata = {"format": "pt", METADATA_ARCHITECTURE: components.architecture,
                    METADATA_CONFIGS: json.dumps(components_configs(components))}
        def chunks(_key: str, tensor: torch.Tensor) -> Iterable[memoryview]:
            stored = recipes.stored_as(tensor, leaves)
            if stored is not None:
                return file_chunks(stored, dtype)
            return tensor_bytes([recipes.materialise(tensor, leaves)], dtype)

        write_safetensors(path, planned, metadata, dtype, chunks=chunks)
    finally:
        for reader in readers.values():
            reader.close()
