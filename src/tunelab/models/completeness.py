"""Is a model complete? Every tensor its layout expects is in the file(s), and nothing is left on the meta device.

The libraries fail quietly here: diffusers leaves a weight missing from a folder on the meta device (the first
forward pass or `.to()` then fails far from the cause), transformers fills a missing text-encoder weight with
random numbers (the model runs and draws garbage). So every load ends with these checks, and `tunelab info` shows
the same count per part without loading anything (safetensors headers only)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.errors import TunelabError, fail
from tunelab.models.components import ModelComponents
from tunelab.models.detect import read_safetensors_header, weight_files

# diffusers still reads VAE folders saved before its attention rename (query/key/value/proj_attn).
DEPRECATED_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


@dataclass
class PartTensors:
    """How many of the tensors a part's layout expects were found, and which were not (in the file's naming)."""

    expected: int
    missing: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return self.expected - len(self.missing)

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.complete:
            return f"all {self.expected} found"
        more = f" (+{len(self.missing) - 1} more)" if len(self.missing) > 1 else ""
        return f"{self.found} of {self.expected} found, missing {self.missing[0]}{more}"


def check_nothing_on_meta(components: ModelComponents, path) -> None:
    """One line naming the first parameter or buffer that no file filled in."""
    for part, module in components.named_parts().items():
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            if tensor.device.type == "meta":
                raise fail(path, f"{part}: weight {name} was never read (left on the meta device; is the model "
                                 "complete?)")


# ---- diffusers folders ----------------------------------------------------------------------------------------


def canonical_key(key: str) -> str:
    """A folder's tensor name as the loaded module names it: transformers ≥ 5.6 dropped CLIPTextModel's
    `text_model.` level (files written before keep it), diffusers renamed the old VAE attention weights."""
    key = key.removeprefix("text_model.")
    for old, new in DEPRECATED_ATTENTION_NAMES.items():
        key = key.replace(old, new)
    return key


def part_file_tensors(part_folder: Path, allow_pickle: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """name → (shape, dtype) of every tensor stored in one part folder (all shards), without loading weights:
    safetensors headers, or a memory-mapped weights-only unpickling of `.bin` files when pickles are allowed."""
    files, _ = weight_files(part_folder, "safetensors")
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        header = read_safetensors_header(file)
        tensors.update({k: (shape, header.dtypes[k]) for k, shape in header.shapes.items()})
    if files or not allow_pickle:
        return tensors
    for file in weight_files(part_folder, "bin")[0]:
        for key, tensor in _read_bin(file).items():
            tensors[key] = (tuple(tensor.shape), str(tensor.dtype))
    return tensors


def _read_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state_dict = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
            state_dict = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  any unpickling failure is a bad file for the user
        raise fail(file, f"cannot load as a weights-only pickle ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def folder_part_tensors(expected_keys, stored_keys) -> PartTensors:
    """`expected_keys` (the module's state dict) against the names stored in the part's files."""
    stored = {canonical_key(k) for k in stored_keys}
    expected = list(expected_keys)
    return PartTensors(len(expected), [k for k in expected if canonical_key(k) not in stored])


def check_folder_complete(folder: Path, components: ModelComponents, allow_pickle: bool) -> None:
    """After a diffusers-folder load: every tensor of every module came from the folder, none is left on meta."""
    for part, module in components.named_parts().items():
        report = folder_part_tensors(module.state_dict(), part_file_tensors(folder / part, allow_pickle))
        if not report.complete:
            raise fail(folder / part, f"missing weight {report.missing[0]} ({report.describe()}; is the folder "
                                      "complete?)")
    check_nothing_on_meta(components, folder)


def no_safetensors_error(part_folder: Path) -> TunelabError:
    """A part folder without .safetensors weights: pickled weights (refused unless allowed), or none at all."""
    from tunelab.models.io import PICKLE_REFUSED

    if any(part_folder.glob("*.bin")) or any(part_folder.glob("*.pt")):
        return fail(part_folder, PICKLE_REFUSED.replace("is a pickle file", "stores its weights as pickle (.bin)"))
    return fail(part_folder, "missing weights: no *.safetensors file (is the folder complete? a copy or download "
                             "may have stopped part way)")


def folder_configs(folder: Path, parts) -> dict[str, dict]:
    configs = {}
    for part in parts:
        try:
            configs[part] = json.loads((folder / part / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise fail(folder / part / "config.json", f"unreadable ({type(e).__name__}: {e})") from None
    return configs
