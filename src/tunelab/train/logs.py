"""TensorBoard scalars of a run (main process only): loss raw and smoothed, LR per group, grad norm, images/s, and
a histogram of the timesteps sampled since the last one."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from tunelab.train.config import LoggingConfig


class TrainLogger:
    def __init__(self, log_dir: Path, config: LoggingConfig, *, enabled: bool, start_step: int = 0):
        self.config = config
        self.writer = None
        if enabled and config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)
        self.smoothed: float | None = None
        self.timesteps: list[torch.Tensor] = []
        self.images = 0
        self.clock = time.perf_counter()

    def step(self, step: int, *, loss: float, grad_norm: float, lrs: dict[str, float], images: int,
             timesteps: torch.Tensor) -> None:
        """Record optimizer step `step` (1-based). Cheap: tensors are only turned into numbers on logging steps."""
        alpha = self.config.loss_smoothing
        if math.isfinite(loss):  # a skipped non-finite step would make the curve NaN for the rest of the run
            self.smoothed = loss if self.smoothed is None else alpha * self.smoothed + (1 - alpha) * loss
        self.images += images
        if self.config.histogram_every_n_steps:
            self.timesteps.append(timesteps.detach().cpu())
        if self.writer is None:
            return
        if step % self.config.log_every_n_steps == 0:
            now = time.perf_counter()
            self.writer.add_scalar("loss/raw", loss, step)
            if self.smoothed is not None:
                self.writer.add_scalar("loss/smoothed", self.smoothed, step)
            self.writer.add_scalar("grad_norm", grad_norm, step)
            self.writer.add_scalar("images_per_s", self.images / max(now - self.clock, 1e-9), step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)
            self.images, self.clock = 0, now
        every = self.config.histogram_every_n_steps
        if every and step % every == 0:
            self.writer.add_histogram("timesteps", torch.cat(self.timesteps), step)
            self.timesteps = []

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
