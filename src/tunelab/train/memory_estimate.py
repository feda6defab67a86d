"""Will it fit? Peak accelerator memory of a training config, estimated before anything is trained.

    peak = weights held + optimizer states + max(activations and gradients during backward, all gradients + step)

- Weights: every part at `[model] dtype`; frozen text encoders are not held when the text embeddings are cached
  (the trainer offloads them), the VAE always is (sampling, checkpoints).
- Gradients: one per trained parameter, in the parameter's dtype.
- Optimizer states: per parameter shape, as each optimizer allocates them (AdamW two full states; AdamW 8-bit one
  byte each plus block scales; Adafactor factored row/column second moments; Lion one state).
- Activations: not guessed from a formula. The UNet (and each trained text encoder) runs one forward pass on the
  `meta` device at the configured resolution and batch, and autograd's saved-tensor hook records every tensor kept
  for backward, in order, and where each trained parameter is first used. Gradient checkpointing is replayed as the
  models do it (their `_gradient_checkpointing_func` hook): inside a checkpointed block nothing is kept but the
  block's inputs, and the block's tensors come back only while its backward runs. Walking that timeline backwards
  (activations freed, gradients appearing) gives the peak of the backward pass. Attention is counted as a fused
  kernel (flash / memory-efficient: q, k, v, output, log-sum-exp), what the trainer runs.
- Per process of an FSDP run (`--shards N`, or under an FSDP launch): train/memory_sharded.py, from this estimate.
- Not counted: the framework's own memory (CUDA context, allocator caching and fragmentation, typically
  0.3-1 GB more in `nvidia-smi` than allocated), and on CPU the process itself (Python, libraries)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterator

import torch

from tunelab.models.components import ModelComponents
from tunelab.models.io import quiet_libraries
from tunelab.train.config import RunConfig
from tunelab.train.parameters import TrainablePlan

if TYPE_CHECKING:
    from tunelab.train.fsdp import FsdpSettings
    from tunelab.train.memory_sharded import Sharding

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GIB = 2**30
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps smaller tensors' states in fp32
BNB_BLOCK = 256
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "lion")  # bitsandbytes blockwise quantisation: one fp32 scale per block of each state


@dataclass
class Event:
    """One step of the forward timeline: bytes autograd saved, gradient bytes a trained parameter will need, or a
    checkpointed block's inputs (kept until its backward); `block` is the checkpointed block it happened in."""

    saved: int = 0
    grad: int = 0
    kept: int = 0
    block: int | None = None
    key: int | None = None  # id of the tensor (dedupe of a block input that is also saved outside blocks)
    weight_copy: bool = False  # autocast's 16-bit copy of a weight (none when FSDP gathers the weights in 16 bits)


@dataclass
class Timeline:
    events: list[Event] = field(default_factory=list)
    largest: int = 0  # the largest single tensor saved: gradients of activations of that size exist in backward

    def without_weight_copies(self) -> Timeline:
        return Timeline([e for e in self.events if not e.weight_copy], self.largest)

    def saved_total(self, checkpointing: bool) -> int:
        outside = {e.key for e in self.events if e.saved and e.block is None}
        return sum(e.saved for e in self.events if not checkpointing or e.block is None) + (
            sum(e.kept for e in self.events if e.key not in outside) if checkpointing else 0)

    def backward_peak(self, checkpointing: bool, shards: int = 1) -> tuple[int, int]:
        """(activations held, gradients made) where their sum peaks during the backward pass; gradients kept as
        1/`shards` of each (FSDP reduce-scatters each group's gradients as soon as its backward ends)."""
        units: list[list[int]] = []  # [kept until this unit's backward, grads it makes, held only during it]
        outside = {e.key for e in self.events if e.saved and e.block is None}
        open_block = None
        for e in self.events:
            if checkpointing and e.block is not None:
                if open_block != e.block:
                    units.append([0, 0, 0])
                    open_block = e.block
                units[-1][0] += e.kept if e.key not in outside else 0
                units[-1][1] += e.grad // shards
                units[-1][2] += e.saved
                continue
            open_block = None
            units.append([e.saved, e.grad // shards, 0])
        peak, grads = (0, 0), 0
        held = sum(u[0] for u in units)
        for kept, grad, recomputed in reversed(units):
            grads += grad
            if held + recomputed + grads > sum(peak):
                peak = (held + recomputed, grads)
            held -= kept
        return peak


@dataclass
class MemoryPart:
    name: str
    bytes: int
    note: str = ""


@dataclass
class MemoryEstimate:
    weights: list[MemoryPart]  # held during training (a part not held has 0 bytes and says why)
    gradients: int
    optimizers: dict[str, tuple[MemoryPart, int]]  # every optimizer → (states, step temporaries)
    optimizer: str  # the configured one
    activations: dict[bool, int]  # gradient checkpointing on/off → activations saved for backward
    backward: dict[bool, tuple[int, int]]  # checkpointing on/off → (activations, gradients) at the backward peak
    live: list[MemoryPart]  # frozen parts run each step without gradients: their working memory
    text_encoders_held: dict[bool, int]  # text embeddings cached / live → frozen encoders' weights held
    checkpointing: bool
    resolution: tuple[int, int]  # (width, height) in pixels
    batch: int
    gradient_note: str = "one per trained parameter"
    gathered: list[MemoryPart] = field(default_factory=list)  # FSDP: whole weights held during the backward pass
    sharding: Sharding | None = None  # per process of a sharded run (train/memory_sharded.py); None: unsharded

    def peak_parts(self, checkpointing: bool | None = None, optimizer: str | None = None) -> list[tuple[str, int]]:
        """What is in memory at the peak: weights and optimizer states throughout, plus either the backward pass's
        activations and gradients at their highest, or all gradients and the optimizer step's temporaries."""
        ckpt = self.checkpointing if checkpointing is None else checkpointing
        kind = optimizer or self.optimizer
        states, step_extra = self.optimizers[kind]
        parts = [(f"weights {p.name}", p.bytes) for p in self.weights] + [(f"optimizer states ({kind})", states.bytes)]
        activations, grads = self.backward[ckpt]
        gathered = [(f"gathered {p.name}", p.bytes) for p in self.gathered]
        candidates = [[("activations", activations), ("gradients", grads), *gathered],
                      [("gradients", self.gradients), ("optimizer step temporaries", step_extra)]]
        candidates += [[(f"live {p.name}", p.bytes)] for p in self.live]
        return parts + max(candidates, key=lambda c: sum(b for _, b in c))

    def peak(self, checkpointing: bool | None = None, optimizer: str | None = None) -> int:
        return sum(b for _, b in self.peak_parts(checkpointing, optimizer))

    def dominating(self) -> list[tuple[str, int]]:
        """The parts of the peak above 10 % of it, largest first."""
        total = self.peak()
        return sorted(((n, b) for n, b in self.peak_parts() if b > 0.1 * total), key=lambda x: -x[1])

    def format(self) -> str:
        ckpt, states = self.checkpointing, self.optimizers[self.optimizer][0]
        where = f"per process, {self.sharding.describe()}" if self.sharding else "accelerator"
        lines = [f"memory estimate ({where}; peak of a training step at {self.resolution[0]}x{self.resolution[1]}, "
                 f"batch {self.batch}{' per process' if self.sharding else ''}):"]
        for p in self.weights:
            lines.append(row(f"weights {p.name}", p.bytes, p.note))
        for p in self.gathered:
            lines.append(row(f"gathered {p.name}", p.bytes, p.note))
        lines.append(row("gradients", self.gradients, self.gradient_note))
        lines.append(row("optimizer states", states.bytes, f"{self.optimizer}: {states.note}"))
        lines.append(row("activations", self.activations[ckpt],
                         f"saved for backward, gradient checkpointing {'on' if ckpt else 'off'}"))
        for p in self.live:
            lines.append(row(f"live {p.name}", p.bytes, p.note))
        lines.append(row("estimated peak", self.peak(),
                         "(not included: CUDA context and allocator cache, typically 0.3-1 GiB more)"))
        if self.sharding:
            lines.append(row("unsharded (DDP) peak", self.sharding.unsharded_peak,
                             "each process holding every weight, gradient and optimizer state"))
        lines.append("  dominated by: " + ", ".join(f"{n} {100 * b / self.peak():.0f} %" for n, b in self.dominating()))
        lines.append(f"  gradient checkpointing on / off: peak {gib(self.peak(True))} / {gib(self.peak(False))} "
                     f"(activations {gib(self.activations[True])} / {gib(self.activations[False])})")
        lines.append("  other optimizers, peak: " + ", ".join(
            f"{kind} {gib(self.peak(optimizer=kind))}" for kind in self.optimizers if kind != self.optimizer))
        if any(self.text_encoders_held.values()):
            lines.append(f"  frozen text encoders: live {gib(self.text_encoders_held[False])} held; with cached text "
                         f"embeddings (and no samples / validation) {gib(self.text_encoders_held[True])}")
        return "\n".join(lines)


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def row(name: str, n: int, note: str) -> str:
    return f"  {name:<24}{gib(n):>11}  {note}"


# ---- optimizer states -----------------------------------------------------------------------------------------


def optimizer_state_bytes(kind: str, shape: tuple[int, ...], param_bytes: int) -> int:
    """Bytes of optimizer state one parameter of `shape` gets (states in the parameter's dtype unless stated)."""
    numel = math.prod(shape)
    if kind in ("adamw", "lion"):
        return (2 if kind == "adamw" else 1) * numel * param_bytes
    if kind == "adamw8bit":
        if numel < BNB_MIN_8BIT_SIZE:
            return 2 * numel * 4
        return 2 * numel + 2 * math.ceil(numel / BNB_BLOCK) * 4
    if kind == "adafactor":  # transformers' Adafactor, beta1 None: factored second moment for ≥ 2-D parameters,
        # in fp32 whatever the parameter's dtype (its states follow the gradient, upcast first)
        if len(shape) >= 2:
            return (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) * 4
        return numel * 4
    raise ValueError(f"unknown optimizer {kind!r}")


def optimizer_estimate(kind: str, shapes: list[tuple[int, ...]], param_bytes: int,
                       implementation: str = "auto") -> tuple[MemoryPart, int]:
    """(states, step temporaries). Adafactor upcasts each 16-bit parameter and its gradient to fp32 during its
    update; a foreach AdamW makes temporaries the size of one state of a whole group (fused / per-parameter loop:
    about one parameter's)."""
    states = sum(optimizer_state_bytes(kind, s, param_bytes) for s in shapes)
    largest = max((math.prod(s) for s in shapes), default=0)
    notes = {"adamw": "2 states per parameter", "adamw8bit": "2 x 8-bit states per parameter + block scales",
             "adafactor": "factored second moments, fp32", "lion": "1 state per parameter"}
    extra = 4 * largest * 4 if kind == "adafactor" else largest * param_bytes * 2  # fp32 gradient, weight, update
    if kind == "adamw" and implementation == "foreach":
        extra = states // 2
    return MemoryPart(kind, states, notes[kind]), extra


# ---- activations: a forward pass on meta ----------------------------------------------------------------------


def fused_attention(original):
    """F.scaled_dot_product_attention as the fused kernels keep it for backward (q, k, v, out, log-sum-exp): on the
    meta device torch would pick the math path, which keeps the whole attention matrix in fp32."""

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if query.device.type != "meta" or kwargs or key.shape[1] != query.shape[1]:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, **kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    return attention


@contextlib.contextmanager
def fused_attention_on_meta() -> Iterator[None]:
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = fused_attention(original)
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


class Recorder:
    """Builds the Timeline of forward passes run inside `recording(module)`."""

    def __init__(self, weight_copy_bytes: int | None, grad_bytes: int):
        self.timeline = Timeline()
        self.weight_copy_bytes = weight_copy_bytes  # mixed precision: weights saved as 16-bit copies
        self.grad_bytes = grad_bytes  # a gradient has its weight's dtype, not the compute dtype of the meta copy
        self.alive: list[torch.Tensor] = []  # keeps ids unique while recording
        self.saved_ids: set[int] = set()
        self.kept_ids: set[int] = set()
        self.params: dict[int, torch.nn.Parameter] = {}
        self.grads_seen: set[int] = set()
        self.block: int | None = None
        self.blocks = 0

    def _note(self, tensor: torch.Tensor, seen: set[int], **fields) -> None:
        if id(tensor) in seen:
            return
        seen.add(id(tensor))
        self.alive.append(tensor)
        self.timeline.events.append(Event(block=self.block, key=id(tensor), **fields))

    def pack(self, tensor: torch.Tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) in self.params:  # a weight: already counted as weights, unless autocast saved a cast copy
            if self.weight_copy_bytes:
                self.timeline.events.append(Event(saved=base.numel() * self.weight_copy_bytes, block=self.block,
                                                  weight_copy=True))
            return tensor
        size = base.numel() * base.element_size()
        self.timeline.largest = max(self.timeline.largest, size)
        self._note(base, self.saved_ids, saved=size)
        return tensor

    def parameters_used(self, module, args) -> None:
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in self.grads_seen:
                self.grads_seen.add(id(p))
                self.timeline.events.append(Event(grad=p.numel() * self.grad_bytes, block=self.block))

    def checkpointed(self, function, *args, **kwargs):
        """Stands in for torch.utils.checkpoint.checkpoint: runs the block, marking what happens inside it."""
        outer = self.block
        self.blocks += 1
        self.block = self.blocks
        for value in [*args, *kwargs.values()]:
            if isinstance(value, torch.Tensor) and value.requires_grad:
                self._note(value, self.kept_ids, kept=value.numel() * value.element_size())
        try:
            return function(*args, **kwargs)
        finally:
            self.block = outer

    @contextlib.contextmanager
    def recording(self, module: torch.nn.Module) -> Iterator[None]:
        self.params.update({id(p): p for p in module.parameters()})
        hooks = [m.register_forward_pre_hook(self.parameters_used) for m in module.modules()]
        for m in module.modules():
            if hasattr(m, "gradient_checkpointing"):  # how diffusers and transformers blocks checkpoint
                m.gradient_checkpointing = True
                m._gradient_checkpointing_func = self.checkpointed
        module.train()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t), fused_attention_on_meta():
                yield
        finally:
            for hook in hooks:
                hook.remove()


def meta_copy(module: torch.nn.Module, dtype: torch.dtype, trainable: set[str]) -> torch.nn.Module:
    """An empty copy of `module` (same config) in `dtype`, trained parameters marked as in the plan."""
    with torch.device("meta"):
        if hasattr(module.config, "to_dict"):  # transformers
            copy = type(module)(module.config)
        else:
            copy = type(module).from_config(module.config)
    with quiet_libraries():  # diffusers warns about any .to(dtype) cast
        copy.to(dtype)
    for name, p in copy.named_parameters():
        p.requires_grad_(name.removeprefix("_orig_mod.") in trainable)
    return copy


def unet_inputs(unet: torch.nn.Module, size: tuple[int, int], batch: int, dtype, context_width: int,
                text_trained: bool) -> dict:
    config = unet.config
    meta = dict(device="meta", dtype=dtype)
    width, height = size  # of the latents
    inputs = {"sample": torch.empty(batch, config.in_channels, height, width, **meta),
              "timestep": torch.zeros(batch, device="meta", dtype=torch.long),
              "encoder_hidden_states": torch.empty(batch, 77, context_width, **meta).requires_grad_(text_trained)}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled, **meta).requires_grad_(text_trained),
                                       "time_ids": torch.empty(batch, 6, **meta)}
    return inputs


def activation_timeline(components: ModelComponents, plan: TrainablePlan, config: RunConfig,
                        size: tuple[int, int], batch: int) -> Timeline:
    """Trained text encoders, then the UNet, each run once forward on meta under one Recorder."""
    weight_dtype = DTYPE_BYTES[config.model.dtype]
    mixed = config.train.mixed_precision != "no"
    compute = {"no": {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.model.dtype],
               "bf16": torch.bfloat16, "fp16": torch.float16}[config.train.mixed_precision]
    recorder = Recorder(weight_copy_bytes=2 if mixed and weight_dtype == 4 else None, grad_bytes=weight_dtype)
    text_trained = False
    for name, part in plan.parts.items():
        if not name.startswith("text_encoder") or not part.trainable:
            continue
        text_trained = True
        encoder = meta_copy(part.module, compute, part.trainable)
        ids = torch.zeros(batch * config.train.max_chunks, 77, dtype=torch.long, device="meta")
        with recorder.recording(encoder):
            encoder(ids, output_hidden_states=True)
    unet = meta_copy(components.unet, compute, plan.parts["unet"].trainable)
    inputs = unet_inputs(unet, size, batch, compute, unet.config.cross_attention_dim, text_trained)
    with recorder.recording(unet):
        unet(**inputs)
    return recorder.timeline


# ---- the estimate -----------------------------------------------------------------------------------------------


def training_resolution(config: RunConfig, components: ModelComponents) -> tuple[int, int]:
    """(width, height) in pixels: the buckets' target resolution (a side, or sd-scripts' [width, height])."""
    buckets = getattr(config.data, "buckets", None)
    if buckets is not None:
        return buckets.size
    side = components.unet.config.sample_size * vae_factor(components)
    return side, side


def vae_factor(components: ModelComponents) -> int:
    return 2 ** (len(components.vae.config.block_out_channels) - 1)


def cached(config: RunConfig) -> tuple[bool, bool]:
    """(latents cached, text embeddings cached) per `[data.cache]`; without a [data] table, neither."""
    cache = getattr(config.data, "cache", None)
    return (bool(getattr(cache, "latents", False)), bool(getattr(cache, "text_embeddings", False)))


def estimate_memory(components: ModelComponents, plan: TrainablePlan, config: RunConfig, shards: int = 1,
                    fsdp: FsdpSettings | None = None) -> MemoryEstimate:
    """The estimate for `config` with `plan` (components may be on the meta device: only shapes are read); with
    `shards` > 1, per process of an FSDP run over that many processes (`fsdp`: its wrapping; train/memory_sharded.py)."""
    whole, timeline = unsharded_estimate(components, plan, config)
    if shards == 1:
        return whole
    from tunelab.train.memory_sharded import sharded_estimate

    return sharded_estimate(whole, timeline, plan, config, shards, fsdp)


def unsharded_estimate(components: ModelComponents, plan: TrainablePlan,
                       config: RunConfig) -> tuple[MemoryEstimate, Timeline]:
    """One process holding everything (one-process and DDP runs), and the activation timeline it was built from."""
    from tunelab.train.recipe import frozen_text_encoders_unneeded

    weight_bytes = DTYPE_BYTES[config.model.dtype]
    resolution = training_resolution(config, components)
    width, height = resolution
    batch = config.train.batch_size
    latents_cached, text_cached = cached(config)
    offloaded = frozen_text_encoders_unneeded(config, SimpleNamespace(has_text_embeddings=text_cached))
    weights, frozen_encoders = [], 0
    for name, module in components.named_parts().items():
        size = sum(p.numel() for p in module.parameters()) * weight_bytes
        trained = name in plan.parts and bool(plan.parts[name].trainable)
        if name.startswith("text_encoder") and not trained:
            frozen_encoders += size
        if name.startswith("text_encoder") and offloaded:
            weights.append(MemoryPart(name, 0, f"not held: frozen, text embeddings cached ({gib(size)})"))
        else:
            weights.append(MemoryPart(name, size, "trained" if trained else "frozen"))
    live = []
    if not latents_cached:
        channels = components.vae.config.block_out_channels[0]
        bytes_per = 2 if weight_bytes == 2 or config.train.mixed_precision != "no" else 4
        live.append(MemoryPart("vae encode", 3 * batch * channels * width * height * bytes_per,
                               "latents not cached: ~3 feature maps at full resolution"))
    shapes = [tuple(p.shape) for part in plan.parts.values() for p in part.parameters()]
    gradients = sum(math.prod(s) for s in shapes) * weight_bytes
    implementation = getattr(config.optimizer, "implementation", "auto")
    optimizers = {kind: optimizer_estimate(kind, shapes, weight_bytes, implementation) for kind in OPTIMIZERS}
    factor = vae_factor(components)
    timeline = activation_timeline(components, plan, config, (width // factor, height // factor), batch)
    working = backward_working(timeline)
    estimate = MemoryEstimate(
        weights, gradients, optimizers, config.optimizer.type,
        activations={c: timeline.saved_total(c) for c in (True, False)},
        backward={c: (timeline.backward_peak(c)[0] + working, timeline.backward_peak(c)[1]) for c in (True, False)},
        live=live, text_encoders_held={
            True: 0 if frozen_text_encoders_unneeded(config, SimpleNamespace(has_text_embeddings=True))
            else frozen_encoders, False: frozen_encoders},
        checkpointing=config.train.gradient_checkpointing, resolution=resolution, batch=batch)
    return estimate, timeline


def backward_working(timeline: Timeline) -> int:
    """The gradients flowing into and out of the op being differentiated."""
    return 2 * timeline.largest
