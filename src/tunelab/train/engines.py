"""Which distributed engine the launch asked accelerate for (its config file or launch flags), and whether tunelab
runs it here.

Plain data parallel (DDP: `distributed_type: MULTI_GPU`, or `--multi_gpu` on CPU with gloo) is what tunelab trains
and checkpoints. FSDP and DeepSpeed are refused, each with its reason, instead of running something else:
- without a GPU, accelerate (1.x) never selects them: it reads the request and trains plain replicated copies;
- on GPUs, a sharded run needs its model and optimizer prepared in one call and its checkpoints written per shard
  (`sharded_checkpoint.py` does that part, tested with torch's FSDP 2 on CPU); the trainer's checkpoints are still
  written from whole modules on the main process, which a sharded run does not have. Until the trainer uses the
  sharded path (see docs/MULTI_NODE.md), the request stops the run before any step."""

from __future__ import annotations

import os

from tunelab.errors import TunelabError

ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}  # what `accelerate launch` sets


def requested_engine() -> str | None:
    """"FSDP" / "DeepSpeed" when the launch asked for one, else None (plain data parallel or one process)."""
    for variable, name in ENGINES.items():
        if os.environ.get(variable, "false").lower() == "true":
            return name
    return None


def refuse_unsupported_engine(has_gpu: bool) -> None:
    engine = requested_engine()
    if engine is None:
        return
    if not has_gpu:
        raise TunelabError(f"the accelerate config asks for {engine}, which accelerate runs only on GPUs: here it "
                           "would train unsharded copies of the model instead; launch with --multi_gpu (gloo) on CPU")  # fmt: skip
    raise TunelabError(f"the accelerate config asks for {engine}: the trainer does not write or resume sharded "
                       "checkpoints yet; use a DDP config (examples/accelerate/ddp_1node_8gpu.yaml; see docs/MULTI_NODE.md)")  # fmt: skip
