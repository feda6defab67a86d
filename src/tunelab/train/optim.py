"""Optimizers (AdamW, AdamW 8-bit, Adafactor, Lion) and learning-rate schedules with warm-up, per parameter group."""

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
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def build_optimizer(groups: list[dict], config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.type == "adamw":
        return torch.optim.AdamW(groups, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
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
