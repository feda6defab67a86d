"""Will it fit on each GPU of a sharded run? The dry run's memory estimate per process of an FSDP 2 run over N
processes (train/fsdp.py), derived from the unsharded estimate (train/memory_estimate.py) and the shard groups
`fsdp.py` makes (the same rule: `FsdpSettings.wraps`, innermost first, the module itself the root group).

- Weights of trained modules: each parameter cut along its first dimension into N chunks, every chunk as large as
  the first (`fully_shard` pads them so), at `[model] dtype` (the master weights). Frozen modules whole, as unsharded.
- Gradients and optimizer states: those of the chunks (the optimizer only ever sees the local shard).
- Gathered weights, held during the backward pass (where the peak is), in the dtype FSDP gathers them in (bf16 with
  `mixed_precision = "bf16"`, else `[model] dtype`), padded like the chunks:
  - trained text encoders whole: they keep their gathered weights from their forward until backward (fsdp.py);
  - the root group's own parameters (those of no wrapped sub-module): the root does not reshard after forward;
  - the deepest chain of nested groups open at once (a group's own parameters and those of the groups around it,
    gathered while it runs), plus the largest group off that chain: FSDP gathers the next group ahead while one
    computes. With `fsdp_reshard_after_forward: false` the whole module stays gathered.
- Gradients during backward: 1/N of those made so far, plus the unsharded gradients (gathered dtype) of the root
  group and of the largest group, and that group's copy for the reduce-scatter (fp32 with bf16, the reduce dtype),
  of the UNet when it trains (the peak is in its backward; the text encoders' backward comes after it).
- Activations: the per-process batch's, as unsharded; but with bf16 FSDP gathers the weights in bf16, so autocast
  makes (and saves) no 16-bit copies of them.
- `fsdp_offload_params`: shards, their gradients and optimizer states live in host memory, 0 on the accelerator.
Not counted: the all-gather's input copy of one shard, the communication library's own buffers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch

from tunelab.train.config import RunConfig
from tunelab.train.fsdp import SHARDING_UNAWARE_OPTIMIZERS, FsdpSettings
from tunelab.train.memory_estimate import (DTYPE_BYTES, OPTIMIZERS, MemoryEstimate, MemoryPart, Timeline,
                                           backward_working, gib, optimizer_estimate)
from tunelab.train.parameters import TrainablePlan

# what `--shards N` assumes without an accelerate FSDP launch: the shipped examples/accelerate/fsdp_2node_8gpu.yaml
DEFAULT_SETTINGS = FsdpSettings(wrap_policy="SIZE_BASED_WRAP", min_num_params=1_000_000)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Sharding:
    shards: int
    settings: FsdpSettings
    unsharded_peak: int  # the same step with one process holding everything (DDP)

    def describe(self) -> str:
        s = self.settings
        groups = {"SIZE_BASED_WRAP": f"shard groups of > {s.min_num_params:,} parameters",
                  "TRANSFORMER_BASED_WRAP": "shard groups: " + (", ".join(s.layer_classes) or
                                                                "each model's _no_split_modules"),
                  "NO_WRAP": "one shard group per module"}[s.wrap_policy]
        return f"sharded over {self.shards} processes (FSDP 2, {groups})"


def requested_sharding(shards: int | None) -> tuple[int, FsdpSettings]:
    """(processes, FSDP settings) a dry run estimates for: `shards` if given, else the launch's WORLD_SIZE when
    `accelerate launch` runs it with an FSDP config (else 1); that config's settings, else DEFAULT_SETTINGS."""
    launched = FsdpSettings.from_launch()
    if shards is None:
        shards = int(os.environ.get("WORLD_SIZE") or 1) if launched else 1
    return shards, launched or DEFAULT_SETTINGS


def prints_for_the_launch() -> bool:
    """Under a launch every process runs the dry run; one of them prints it."""
    return int(os.environ.get("RANK") or 0) == 0


# ---- shard groups ---------------------------------------------------------------------------------------------


@dataclass
class ShardGroup:
    params: list[tuple[Shape, bool]]  # (shape, trained) of each parameter this group owns
    parent: int | None  # index of the group around it; None: the root


def shard_groups(module: torch.nn.Module, trainable: set[str], settings: FsdpSettings) -> list[ShardGroup]:
    """The groups `fsdp.ShardedParts` makes of `module`, the root first: each parameter belongs to the innermost
    wrapped module around it."""
    wrapped = {id(sub) for sub in list(module.modules())[1:] if settings.wraps(module, sub)}
    groups = [ShardGroup([], None)]
    seen: set[int] = set()  # modules and parameters met before (shared ones count once, as modules() does)

    def walk(sub: torch.nn.Module, prefix: str, group: int) -> None:
        if id(sub) in seen:
            return
        seen.add(id(sub))
        if id(sub) in wrapped:
            groups.append(ShardGroup([], group))
            group = len(groups) - 1
        for name, p in sub.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                groups[group].params.append((tuple(p.shape), prefix + name in trainable))
        for name, child in sub.named_children():
            walk(child, f"{prefix}{name}.", group)

    walk(module, "", 0)
    return groups


def local_shape(shape: Shape, shards: int) -> Shape:
    """One process's chunk of a parameter, padded as the first chunk (what each process allocates)."""
    return (math.ceil(shape[0] / shards), *shape[1:]) if shape else shape


def gathered_numel(params: list[tuple[Shape, bool]], shards: int, trained_only: bool = False) -> int:
    return shards * sum(math.prod(local_shape(s, shards)) for s, trained in params if trained or not trained_only)


def gathered_in_flight(groups: list[ShardGroup], shards: int) -> int:
    """Elements gathered at once during the backward pass: the root's own, the deepest chain of open groups and
    the largest group off it (the one gathered ahead)."""
    own = [gathered_numel(g.params, shards) for g in groups]

    def chain(index: int | None) -> list[int]:
        members = []
        while index:  # up to, not including, the root
            members.append(index)
            index = groups[index].parent
        return members

    deepest = max((chain(i) for i in range(1, len(groups))), key=lambda c: sum(own[i] for i in c), default=[])
    ahead = max((own[i] for i in range(1, len(groups)) if i not in deepest), default=0)
    return own[0] + sum(own[i] for i in deepest) + ahead


def gradients_in_flight(groups: list[ShardGroup], shards: int) -> tuple[int, int]:
    """(unsharded gradients, reduce-scatter copy) in elements: the root's (reduced when the whole backward ends)
    and the largest other group's (reduced when its backward ends, while the next one runs)."""
    root = gathered_numel(groups[0].params, shards, trained_only=True)
    largest = max((gathered_numel(g.params, shards, trained_only=True) for g in groups[1:]), default=0)
    return root + largest, max(root, largest)


# ---- the estimate ---------------------------------------------------------------------------------------------


def sharded_estimate(whole: MemoryEstimate, timeline: Timeline, plan: TrainablePlan, config: RunConfig, shards: int,
                     settings: FsdpSettings | None = None) -> MemoryEstimate:
    """`whole` (one process holding everything) per process of an FSDP run over `shards` processes."""
    settings = settings or DEFAULT_SETTINGS
    master = DTYPE_BYTES[config.model.dtype]
    bf16 = config.train.mixed_precision == "bf16"  # fsdp.py: gathered in bf16, reduced in fp32
    gathered_bytes, reduce_bytes = (2, 4) if bf16 else (master, master)
    on_host = settings.offload_params
    sharded = {name: part for name, part in plan.parts.items() if part.trainable}  # what fsdp.py shards
    groups = {name: shard_groups(part.module, part.trainable, settings) for name, part in sharded.items()}
    weights = [sharded_weights(p, groups[p.name], shards, master, on_host) if p.name in sharded else p
               for p in whole.weights]
    local = [local_shape(s, shards) for g in groups.values() for group in g for s, trained in group.params if trained]
    host = 0 if on_host else 1
    optimizers = sharded_optimizers(local, master, getattr(config.optimizer, "implementation", "auto"), on_host,
                                    config.optimizer.type)
    gathered = [gathered_part(name, groups[name], shards, gathered_bytes, settings) for name in sharded]
    # the peak is in the UNet's backward when it trains (the text encoders' backward comes after it): its groups'
    # gradients are the ones in flight then
    peak_modules = ["unet"] if "unet" in groups else list(groups)
    grads_in_flight = max(unsharded * gathered_bytes + copy * reduce_bytes
                          for unsharded, copy in (gradients_in_flight(groups[name], shards) for name in peak_modules))
    activity = timeline.without_weight_copies() if bf16 else timeline
    backward = {}
    for ckpt in (True, False):
        activations, grads = activity.backward_peak(ckpt, shards)
        backward[ckpt] = (activations + backward_working(timeline), grads * host + grads_in_flight)
    note = (f"1/{shards} shard per trained parameter" + (" (in host memory)" if on_host else "") +
            f"; during backward also {gib(grads_in_flight)}: unsharded ones and their reduce-scatter copy")
    return replace(whole, weights=weights, gradients=sum(map(math.prod, local)) * master * host,
                   optimizers=optimizers, activations={c: activity.saved_total(c) for c in (True, False)},
                   backward=backward, gathered=gathered, gradient_note=note,
                   sharding=Sharding(shards, settings, whole.peak()))


def sharded_optimizers(local: list[Shape], master: int, implementation: str, on_host: bool,
                       configured: str) -> dict[str, tuple[MemoryPart, int]]:
    """The (states, step temporaries) for the local shards of every optimizer a sharded run can step (and of the
    configured one, which training then refuses if it cannot); offloaded: stepped in host memory."""
    optimizers = {}
    for kind in (k for k in OPTIMIZERS if k not in SHARDING_UNAWARE_OPTIMIZERS or k == configured):
        states, step_extra = optimizer_estimate(kind, local, master, implementation)
        if on_host:
            states, step_extra = replace(states, bytes=0, note=states.note + ", in host memory"), 0
        optimizers[kind] = (states, step_extra)
    return optimizers


def sharded_weights(whole: MemoryPart, groups: list[ShardGroup], shards: int, master: int,
                    on_host: bool) -> MemoryPart:
    size = sum(math.prod(local_shape(s, shards)) for g in groups for s, _ in g.params) * master
    where = "in host memory (fsdp_offload_params)" if on_host else "master weights"
    return MemoryPart(whole.name, 0 if on_host else size, f"trained: 1/{shards} shard, {where}")


def gathered_part(name: str, groups: list[ShardGroup], shards: int, dtype_bytes: int,
                  settings: FsdpSettings) -> MemoryPart:
    if name.startswith("text_encoder") or not settings.reshard_after_forward:
        whole = sum(gathered_numel(g.params, shards) for g in groups)
        why = "keeps its gathered weights until backward" if name.startswith("text_encoder") else \
            "fsdp_reshard_after_forward false"
        return MemoryPart(name, whole * dtype_bytes, f"whole, during forward and backward: {why}")
    if len(groups) == 1:
        return MemoryPart(name, gathered_in_flight(groups, shards) * dtype_bytes, "one shard group: gathered whole")
    return MemoryPart(name, gathered_in_flight(groups, shards) * dtype_bytes,
                      f"{len(groups)} shard groups: root + deepest nested groups + the next, gathered at once")
