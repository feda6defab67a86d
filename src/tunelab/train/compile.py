"""`train.compile`: torch.compile on the modules as called in training, and the time spent compiling.

Only the training wrappers are compiled (`TrainingRun.unet` / `.text_encoders`, around the DDP wrapper when there is
one: dynamo then splits the graph at DDP's bucket boundaries); `ModelComponents` keep the plain modules, which share
the same parameters, so saving, EMA, resume, sampling and validation see the same weights and never trigger a
compile of their own (eval mode, no grad).

Compiling happens lazily: at the first forward and backward, and again when a new input shape arrives (another
aspect-ratio bucket). torch reports each compile's start and end; `CompileClock` adds them up."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from tunelab import atomic


def compiled(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    return torch.compile(module, backend=backend)


class CompileClock:
    """Seconds spent compiling since it was made (dynamo tracing, backend code generation, a backward graph compiled
    at its first use), from torch's compile callbacks; nested compiles are counted once."""

    def __init__(self, record: Path | None = None):
        from torch._dynamo import callback_handler

        self.record = record  # the run record (run.json) that gets "compile_seconds"
        self.handler = callback_handler
        self.seconds = 0.0
        self.reported: float | None = None  # the first report always writes (0 s: compiled code was reused)
        self.started: float | None = None
        self.handler.register_start_callback(self.start)
        self.handler.register_end_callback(self.end)

    def start(self, _args) -> None:
        self.started = time.perf_counter()

    def end(self, _args) -> None:
        if self.started is not None:
            self.seconds += time.perf_counter() - self.started
            self.started = None

    def report(self, step: int, logger, *, verbose: bool) -> None:
        """After a step, when compile time grew: the total so far to TensorBoard and the run record
        (`compile_seconds`), and one line."""
        if self.seconds == self.reported:
            return
        self.reported = self.seconds
        logger.scalar("compile_seconds", self.seconds, step)
        if self.record is not None and self.record.exists():
            atomic.write_json(self.record, {**json.loads(self.record.read_text()), "compile_seconds": self.seconds})
        if verbose:
            tqdm.write(f"step {step}: {self.seconds:.1f} s spent compiling so far (train.compile)", file=sys.stderr)

    def close(self) -> None:
        self.handler.remove_start_callback(self.start)
        self.handler.remove_end_callback(self.end)


def compile_for_training(unet: torch.nn.Module, text_encoders: list[torch.nn.Module], trainable: list[bool],
                         backend: str) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """The UNet, and each text encoder that trains, compiled (frozen encoders run under no_grad, once a step)."""
    settle_config(getattr(unet, "module", unet))  # under DDP: the module inside
    return compiled(unet, backend), [compiled(m, backend) if t else m for m, t in zip(text_encoders, trainable)]


def settle_config(module: torch.nn.Module) -> None:
    """diffusers' `save_config` writes `_class_name` / `_diffusers_version` into the module's own config dict the
    first time a checkpoint is saved; dynamo guards on that dict's size, so the first step after the first
    checkpoint compiled the whole UNet again (measured: +29 s on the tiny UNet). Writing them now keeps the dict as
    it will stay."""
    to_json = getattr(module, "to_json_string", None)
    if to_json is not None:
        to_json()
