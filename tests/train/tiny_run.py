"""A training run on the tiny SDXL with in-memory data, as a separate process: the resume tests launch it
(`python tiny_run.py CONFIG.json [--resume latest] [--kill-mid-step SEED | --kill-mid-write SEED]`). The data and model
depend only on fixed seeds, so every launch sees the same ones. The kills land at a seeded moment between the run's
first two checkpoints: inside the UNet's forward pass of some micro-batch, or inside the writing of the second
checkpoint (at one of its temp files being created, written or renamed)."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
from pathlib import Path

import torch


def tiny_items(count: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "star"]
    captions = [f"{colours[i % 4]} {shapes[i % 3]}, solo" if i % 5 else "" for i in range(count)]
    return {"latents": torch.randn(count, 4, 8, 8, generator=g), "captions": captions}


def small_sdxl():
    """The tiny SDXL made smaller still (UNet 0.47M parameters): tests train it many times on 2 busy cores."""
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2)


def die(message: str) -> None:
    print(f"killed {message}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_mid_step(unet: torch.nn.Module, seed: int, every: int, accumulation: int) -> None:
    """SIGKILL inside the UNet's forward pass of a seeded micro-batch of a step between checkpoints `every` and
    `2 * every` (one UNet call per micro-batch: no sampling or validation in these runs)."""
    rng = random.Random(seed)
    step, micro = rng.randint(every + 1, 2 * every - 1), rng.randrange(accumulation)
    target, calls = (step - 1) * accumulation + micro + 1, 0

    def count(module, args):
        nonlocal calls
        calls += 1
        if calls == target:
            die(f"mid-step: step {step}, micro-batch {micro + 1} of {accumulation}")

    unet.register_forward_pre_hook(count)


def kill_mid_write(writing: Path, seed: int) -> None:
    """SIGKILL at a seeded file event under `writing` (the checkpoint's temp folder): a temp file created, opened for
    writing or renamed. A checkpoint of these runs is 38 such events; the kill lands at one of the first 30."""
    target, events = random.Random(seed).randint(1, 30), 0
    prefix = str(writing)
    written = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(name: str, args: tuple) -> None:
        nonlocal events
        if name not in ("open", "os.rename") or isinstance(args[0], int):
            return
        if name == "open" and not (isinstance(args[2], int) and args[2] & written):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(prefix):
            events += 1
            if events == target:
                die(f"mid-write: event {target} ({name} {os.path.relpath(path, writing)})")

    sys.addaudithook(hook)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--resume")
    parser.add_argument("--kill-mid-step", type=int, metavar="SEED")
    parser.add_argument("--kill-mid-write", type=int, metavar="SEED")
    parser.add_argument("--items", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if torch.cuda.is_available():  # the resume test compares bit for bit: CUDA's fast kernels are not deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)  # warns naming an op that has no such kernel
        torch.backends.cudnn.benchmark = False
    from accelerate import PartialState

    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.checkpoint import checkpoint_dir
    from tunelab.train.config import RunConfig
    from tunelab.train.recipe import run_training

    config = RunConfig.model_validate(json.loads(Path(args.config).read_text()))
    components = small_sdxl()
    every = config.checkpoint.every_n_steps
    if args.kill_mid_step is not None:
        kill_mid_step(components.unet, args.kill_mid_step, every, config.train.gradient_accumulation_steps)
    if args.kill_mid_write is not None:
        second = checkpoint_dir(config.train.output_dir, 2 * every)
        kill_mid_write(second.with_name(f".{second.name}.tmp"), args.kill_mid_write)
    state = PartialState(cpu=not torch.cuda.is_available())
    batches = InMemoryBatches(tiny_items(args.items), batch_size=config.train.batch_size, seed=config.train.seed,
                              rank=state.process_index, world_size=state.num_processes)
    run_training(config, components=components, batches=batches, resume=args.resume)


if __name__ == "__main__":
    main()


def base_config(output_dir, **tables) -> dict:
    """A tiny-run config: 3 steps of batch 4, high learning rates so every trained tensor moves."""
    config = {
        "model": {"path": "unused"},
        "train": {"output_dir": str(output_dir), "max_steps": 3, "batch_size": 4},
        "unet": {"learning_rate": 1e-3},
        "text_encoder": {"learning_rate": 1e-3},
        "checkpoint": {"every_n_epochs": 0},
        "logging": {"progress_bar": False, "tensorboard": False},
    }
    for table, values in tables.items():
        config.setdefault(table, {}).update(values)
    return config


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}
