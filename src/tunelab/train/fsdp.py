"""FSDP 2 in the trainer: when the launch's accelerate config asks for FSDP (`distributed_type: FSDP`,
`fsdp_version: 2`), every trained module (the UNet, and the text encoders when they train) is sharded over the
processes with torch's `fully_shard`; each process then holds a shard of their weights, gradients and optimizer
state. Frozen modules (VAE, frozen encoders) stay whole on every process, as in a DDP run.

Why tunelab applies `fully_shard` itself instead of handing the model to `accelerator.prepare`: accelerate (1.x)
applies FSDP only on GPUs (without one it reads the request and trains unsharded copies), so a run prepared by
accelerate could not be tested here. `fully_shard` is the engine accelerate's `fsdp_version: 2` applies, with the
same wrapping rules (below), and it runs on CPU (gloo) and GPUs (NCCL) alike: one code path, tested with 2 CPU
processes. accelerate still launches the processes, reads the config file (these settings come from the variables
`accelerate launch` sets from it) and gives the process group, autocast and reductions.

Wrapping (`fsdp_auto_wrap_policy`), as accelerate's FSDP 2 does it: every sub-module, innermost first, whose
parameters number more than `fsdp_min_num_params` (SIZE_BASED_WRAP) or whose class is named in
`fsdp_transformer_layer_cls_to_wrap` (TRANSFORMER_BASED_WRAP; default: the model's `_no_split_modules`) becomes its
own shard group; the module itself always is one (NO_WRAP: only it).

Where an unsharded run uses its whole modules (each checkpoint's model export, samples, validation), a sharded run
first gathers the whole weights into host memory on the main process (`gathered_components`, collective)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import torch

from tunelab.errors import TunelabError
from tunelab.models.components import ModelComponents

WRAP_POLICIES = ("SIZE_BASED_WRAP", "TRANSFORMER_BASED_WRAP", "NO_WRAP")


@dataclass(frozen=True)
class FsdpSettings:
    wrap_policy: str = "NO_WRAP"
    min_num_params: int = 0
    layer_classes: tuple[str, ...] = ()  # TRANSFORMER_BASED_WRAP; empty: each module's own _no_split_modules
    reshard_after_forward: bool = True
    offload_params: bool = False

    @classmethod
    def from_launch(cls) -> FsdpSettings | None:
        """The FSDP settings `accelerate launch` passed from its config file; None when it asked for no FSDP."""
        env = os.environ
        if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
            return None
        version = env.get("FSDP_VERSION", "1")
        if version != "2":
            raise TunelabError(f"the accelerate config asks for FSDP version {version}: tunelab trains with FSDP 2; "
                               "set fsdp_version: 2 in its fsdp_config (examples/accelerate/fsdp_2node_8gpu.yaml)")  # fmt: skip
        policy = env.get("FSDP_AUTO_WRAP_POLICY", "NO_WRAP").upper()
        if policy not in WRAP_POLICIES:
            raise TunelabError(f"fsdp_auto_wrap_policy {policy!r}: expected one of {', '.join(WRAP_POLICIES)}")
        classes = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or ""
        return cls(wrap_policy=policy, min_num_params=int(env.get("FSDP_MIN_NUM_PARAMS") or 0),
                   layer_classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
                   reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
                   offload_params=env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true")

    def wraps(self, root: torch.nn.Module, module: torch.nn.Module) -> bool:
        """Whether `module` (a sub-module of `root`) gets its own shard group."""
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):  # no forward: fully_shard refuses them
            return False
        if self.wrap_policy == "SIZE_BASED_WRAP":
            return sum(p.numel() for p in module.parameters()) > self.min_num_params
        if self.wrap_policy == "TRANSFORMER_BASED_WRAP":
            return type(module).__name__ in (self.layer_classes or getattr(root, "_no_split_modules", None) or ())
        return False


SHARDING_UNAWARE_OPTIMIZERS = {  # optimizer.type: why it cannot step sharded (DTensor) parameters
    "adamw8bit": "bitsandbytes' 8-bit optimizers do not handle sharded parameters (its issues 89 and 1633)",
    "adafactor": "transformers' Adafactor mixes plain tensors into sharded ones and fails at its first step",
}


def refuse_unsupported_with_fsdp(config) -> None:
    """What a sharded run cannot do, refused before any step (with one process too: a config must not fail only
    once scaled out)."""
    why = SHARDING_UNAWARE_OPTIMIZERS.get(config.optimizer.type)
    if why:
        raise TunelabError(f"optimizer.type {config.optimizer.type!r} with FSDP: {why}; use \"adamw\" (sharded, its "
                           "states already take 1/N of the memory per process) or \"lion\"")  # fmt: skip


class ShardedParts:
    """The trained modules of a run, sharded in place (`fully_shard` keeps each module object and its parameter
    names; the parameters become DTensors, so the optimizer must be built afterwards)."""

    def __init__(self, parts: dict[str, torch.nn.Module], settings: FsdpSettings, *, mixed_precision: str):
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

        self.parts, self.settings = parts, settings
        # torch's advice on every call of a module whose output is a view; nothing here changes those in place
        # (the sharded runs' losses match unsharded ones: tests/train/test_fsdp.py)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor")
        self.classes = {name: type(module) for name, module in parts.items()}  # before fully_shard swaps them
        # bf16: weights gathered and computed in bf16, gradients reduced in fp32, the sharded master weights fp32
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if mixed_precision == "bf16" else MixedPrecisionPolicy()
        kwargs = {"reshard_after_forward": settings.reshard_after_forward, "mp_policy": policy}
        if settings.offload_params and torch.cuda.is_available():  # on CPU the weights are in host memory anyway
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for name, module in parts.items():
            # Prompt encoding reads a text encoder's penultimate hidden state, captured inside it by a hook: no
            # shard group's output, so no pre-backward gathering would bring back weights resharded after the forward
            # (backward then fails on emptied storage). Text encoders keep their gathered weights until backward.
            own = {**kwargs, "reshard_after_forward": False} if name.startswith("text_encoder") else kwargs
            for sub in reversed(list(module.modules())[1:]):  # innermost first: each sub-module before its parent
                if settings.wraps(module, sub) and not isinstance(sub, FSDPModule):
                    fully_shard(sub, **own)
            fully_shard(module, **{k: v for k, v in own.items() if k != "reshard_after_forward"})  # root: torch's rule
            keep_output_capturing(module)

    def set_gradient_sync(self, sync: bool) -> None:
        """Gradient accumulation: reduce-scatter only on the step's last micro-batch (DDP's no_sync)."""
        for module in self.parts.values():
            module.set_requires_gradient_sync(sync)

    def full_weights(self, name: str) -> dict[str, torch.Tensor]:
        """Collective: part `name`'s whole state dict on the main process (in CPU memory), {} on the others."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.parts[name], options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def unsharded_copy(self, name: str, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A plain module of part `name`'s class holding `weights`: parameters built on the meta device (no second
        random initialisation), then assigned the whole weights; buffers built as the class builds them."""
        from accelerate import init_empty_weights

        cls, sharded = self.classes[name], self.parts[name]
        with init_empty_weights(include_buffers=False):
            copy = cls.from_config(sharded.config) if hasattr(cls, "from_config") else cls._from_config(sharded.config)
        copy.load_state_dict(weights, assign=True)  # strict: every parameter and persistent buffer
        return copy.eval()

    def gathered_components(self, components: ModelComponents, is_main: bool) -> ModelComponents | None:
        """Collective: on the main process, the components with every sharded part replaced by a plain copy of
        its whole weights in host memory (what is saved, sampled and validated); None on the others."""
        weights = {name: self.full_weights(name) for name in self.parts}
        if not is_main:
            return None
        copies = {name: self.unsharded_copy(name, w) for name, w in weights.items()}
        encoders = [copies.get("text_encoder" if i == 0 else f"text_encoder_{i + 1}", te)
                    for i, te in enumerate(components.text_encoders)]
        return replace(components, unet=copies.get("unet", components.unet), text_encoders=encoders)


def keep_output_capturing(module: torch.nn.Module) -> None:
    """transformers (5.x) finds which outputs a model can return (`output_hidden_states`, which prompt encoding
    needs) by the exact name of the model's class; `fully_shard` swaps the class for an FSDP subclass, and the
    encoder would silently return no hidden states. Register the subclass under the same outputs."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # other transformers versions: nothing registered by class name
        return
    if getattr(module, "_can_record_outputs", None):
        _CAN_RECORD_REGISTRY[module] = module._can_record_outputs
