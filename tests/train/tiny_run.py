"""A training run on the tiny SDXL with in-memory data, as a separate process: the resume and multi-process tests
launch it (`python tiny_run.py CONFIG.json [--resume latest] [--kill-at-checkpoint STEP]`, or under
`accelerate launch`). The data and model depend only on fixed seeds, so every launch sees the same ones."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
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


def kill_self_when(checkpoint: Path) -> None:
    """SIGKILL this process as soon as `checkpoint` exists: an abrupt death in the middle of later steps."""
    def watch():
        while not checkpoint.exists():
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--resume")
    parser.add_argument("--kill-at-checkpoint", type=int)
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
    if args.kill_at_checkpoint is not None:
        kill_self_when(checkpoint_dir(config.train.output_dir, args.kill_at_checkpoint))
    state = PartialState(cpu=not torch.cuda.is_available())
    batches = InMemoryBatches(tiny_items(args.items), batch_size=config.train.batch_size, seed=config.train.seed,
                              rank=state.process_index, world_size=state.num_processes)
    run_training(config, components=small_sdxl(), batches=batches, resume=args.resume)


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
