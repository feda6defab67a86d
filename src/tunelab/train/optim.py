"""Optimizers (AdamW, AdamW 8-bit, Adafactor, Lion) and learning-rate schedules with warm-up, per parameter group.

The step is as cheap as torch allows: AdamW uses torch's fused kernel where the parameters' device has one (CPU,
CUDA, ...), else the multi-tensor (`foreach`) one; torch's own default on CPU is a Python loop over parameters, which
costs about as much as the UNet's forward pass on small models. Lion runs on multi-tensor ops too."""

from __future__ import annotations

import math

import torch

from tunelab.errors import TunelabError
from tunelab.train.config import OptimizerConfig


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an interpolated momentum.
    Use a ~3-10× smaller learning rate and larger weight decay than AdamW."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            averages = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in params]
            beta1, beta2 = group["betas"]
            # one multi-tensor op per line instead of a Python loop over (thousands of) parameters
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            update = torch._foreach_mul(averages, beta1)
            torch._foreach_add_(update, grads, alpha=1 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-group["lr"])
            torch._foreach_mul_(averages, beta2)
            torch._foreach_add_(averages, grads, alpha=1 - beta2)
        return loss


def build_optimizer(groups: list[dict], config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.type == "adamw":
        kind = adamw_implementation(groups, config.implementation)
        return torch.optim.AdamW(groups, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay,
                                 **({kind: True} if kind != "loop" else {"foreach": False}))
    if config.type == "adamw8bit":
        if not torch.cuda.is_available():
            raise TunelabError("optimizer.type: adamw8bit needs a CUDA GPU (bitsandbytes); on CPU use \"adamw\"")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TunelabError("optimizer.type: adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    if config.type == "adafactor":
        from transformers.optimization import Adafactor

        # External learning rates (per group, with our schedule), not Adafactor's relative-step heuristic.
        return Adafactor(groups, lr=groups[0]["lr"], scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=config.weight_decay)
    return Lion(groups, betas=config.betas, weight_decay=config.weight_decay)


def adamw_implementation(groups: list[dict], requested: str) -> str:
    """"fused", "foreach" or "loop": the one asked for, or for "auto" the fastest the parameters allow."""
    if requested == "fused" and not fused_supported(groups):
        raise TunelabError("optimizer.implementation: \"fused\" AdamW has no kernel for these parameters' device "
                           "or dtype; use \"auto\" or \"foreach\"")
    if requested != "auto":
        return requested
    return "fused" if fused_supported(groups) else "foreach"


def fused_supported(groups: list[dict]) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    return all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type in devices and p.is_floating_point()
               for group in groups for p in group["params"])  # sharded (DTensor) parameters keep foreach


def lr_factor(step: int, config: OptimizerConfig, total_steps: int) -> float:
    """Multiplier of every group's base learning rate at optimizer step `step` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.lr_scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    if config.lr_scheduler == "linear":
        decay = 1.0 - progress
    elif config.lr_scheduler == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif config.lr_scheduler == "cosine_with_restarts":  # 3 cycles, as a common default
        decay = 0.5 * (1.0 + math.cos(math.pi * ((3 * progress) % 1.0))) if progress < 1 else 0.0
    else:  # polynomial, power 2
        decay = (1.0 - progress) ** 2
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay


def build_lr_scheduler(optimizer, config: OptimizerConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
