"""Which distributed engine the launch asked accelerate for (its config file or launch flags), and whether tunelab
runs it.

- Plain data parallel (DDP: `distributed_type: MULTI_GPU`, or `--multi_gpu` on CPU with gloo): accelerate wraps the
  trained modules.
- FSDP (`distributed_type: FSDP`, `fsdp_version: 2`): tunelab shards the trained modules itself with torch's
  `fully_shard` (`fsdp.py` says why); the Accelerator is created without its FSDP plugin, for the process group.
- DeepSpeed: refused with its reason before any step (its engine owns the model, optimizer and checkpoints; nothing
  here could run or test it without GPUs)."""

from __future__ import annotations

import contextlib
import os

import torch

from tunelab.errors import TunelabError

FSDP_VARIABLE = "ACCELERATE_USE_FSDP"  # what `accelerate launch` sets for a config with distributed_type FSDP


def refuse_unsupported_engine() -> None:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise TunelabError("the accelerate config asks for DeepSpeed, which tunelab does not train with; use an FSDP "
                           "config (examples/accelerate/fsdp_2node_8gpu.yaml) or a DDP one (see docs/MULTI_NODE.md)")  # fmt: skip


def any_process(accelerator, flag: bool) -> bool:
    """Collective: whether `flag` is true on any process (e.g. validation, decided on the main process only; a
    non-finite shard, seen by one process)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), "max"))


@contextlib.contextmanager
def without_accelerate_fsdp():
    """While the Accelerator is created: accelerate must not build its own FSDP plugin (tunelab shards itself)."""
    saved = os.environ.pop(FSDP_VARIABLE, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[FSDP_VARIABLE] = saved
