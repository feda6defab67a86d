"""Training state of a sharded run (FSDP 2: every trained parameter is a DTensor, each process holds a shard of it):
saved shard by shard, resumed exactly, and read back whole in one process (`merged_weights`).

Format: torch.distributed.checkpoint (DCP), as accelerate's FSDP `save_state` writes it: one `__<rank>_0.distcp`
file per process and a `.metadata` file, under `folder`. What is in it: {"model": the trained modules' weights,
keyed "<part>.<name>" (e.g. "unet.conv_in.weight"), "optimizer": the optimizer state keyed by those names, and
what the caller adds, e.g. "ema": the EMA weights by the same names}, so a run resumes with any number of processes
(DCP reshards on load), and reading it back whole needs no process group.

`save_sharded` and `load_sharded` are collective: all processes call them."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

MODEL, OPTIMIZER = "model", "optimizer"
IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")  # optimizer group keys naming the kernel


def _state(parts: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> tuple[torch.nn.Module, dict]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    container = torch.nn.ModuleDict(parts)  # one module over every trained part: one key space for the optimizer
    model_state, optimizer_state = get_state_dict(container, optimizer)
    return container, {MODEL: model_state, OPTIMIZER: optimizer_state}


def save_sharded(folder: Path, parts: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Each process writes its shards of `parts`' weights and of the optimizer state into `folder` (which the
    caller renames into place when every process is done, as for any checkpoint). `extra`: more named tensors
    (e.g. {"ema": EMA weights}), sharded or not, saved beside them."""
    import torch.distributed.checkpoint as dcp

    _, state = _state(parts, optimizer)
    dcp.save({**state, **(extra or {})}, checkpoint_id=str(folder))


def load_sharded(folder: Path, parts: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                 extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Restore `parts`' weights, the optimizer state and the `extra` tensors saved by `save_sharded`, in place
    (sharded as they are now, or not at all: the number of processes may differ from the saving run's)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    container, state = _state(parts, optimizer)
    with warnings.catch_warnings():  # one process without a process group: DCP says it loads in one process, as meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load({**state, **(extra or {})}, checkpoint_id=str(folder))
    # the step's implementation stays this run's (unsharded parameters may use the fused kernel, DTensors not)
    kernels = [{k: g[k] for k in IMPLEMENTATION if k in g} for g in optimizer.param_groups]
    set_state_dict(container, optimizer, model_state_dict=state[MODEL], optim_state_dict=state[OPTIMIZER])
    for group, own in zip(optimizer.param_groups, kernels):
        group.update(own)


def merged_weights(folder: Path, key: str = MODEL) -> dict[str, torch.Tensor]:
    """The full tensors under `key` of a sharded checkpoint ("model": the trained weights; "ema": the EMA weights
    when the run kept them), read in this one process: {"<part>.<name>": tensor}."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(str(folder), str(whole))  # the public way to read DCP without a process group
        state = torch.load(whole, map_location="cpu", weights_only=True)
    return {name: tensor.contiguous() for name, tensor in state[key].items()}
