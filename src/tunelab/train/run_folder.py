"""A run folder (`train.output_dir`) is never silently reused: `tunelab train` on a folder that already holds a run
is refused unless it is continued (`--resume`) or replaced (`--overwrite`); `--resume latest` on a finished run says
so instead of training zero steps.

Without this, a re-run started again from step 0 in the same folder: it rewrote run.json, added a second
TensorBoard event file beside the old one and overwrote the old checkpoints one by one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunelab.errors import TunelabError, fail
from tunelab.train.checkpoint import STATE, find_checkpoint
from tunelab.train.config import RunConfig

RUN_OUTPUTS = ("run.json", "status.json", "checkpoints", "tensorboard", "samples")  # what only a training run writes
# `tunelab validate` writes validation.json there too, also before any training: not a sign of a run, but an
# overwritten run's validation results go with it
REPLACED_WITH_RUN = ("validation.json",)


def run_outputs(output_dir: Path) -> list[Path]:
    """The outputs of an earlier run in `output_dir` (empty: the folder is free)."""
    return [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def check_run_folder(config: RunConfig, *, resume: str | None, overwrite: bool) -> str | None:
    """Before `tunelab train`: raise a one-line TunelabError when the folder holds a run that this command would
    silently restart; with `overwrite`, delete that run's outputs; return a message when a resumed run is already
    finished (nothing to train), else None."""
    output_dir = Path(config.train.output_dir)
    if resume is not None and overwrite:
        raise TunelabError("--resume and --overwrite: give one (continue the run, or replace it)")
    if resume is not None:
        return finished_message(config, find_checkpoint(output_dir, resume))
    earlier = run_outputs(output_dir)
    if not earlier:
        return None
    if overwrite:
        if is_main_process():  # the other processes of a multi-process launch only train
            for path in earlier + [output_dir / n for n in REPLACED_WITH_RUN if (output_dir / n).exists()]:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return None
    steps = sorted((output_dir / "checkpoints").glob(f"step-*/{STATE}/progress.json"))
    held = f"checkpoints up to {steps[-1].parent.parent.name}" if steps else "no checkpoint to resume from"
    continue_it = "continue it with --resume latest, " if steps else ""
    raise fail(output_dir, f"already holds a run ({held}); {continue_it}train into another train.output_dir, "
                           "or pass --overwrite to delete it and start again")


def finished_message(config: RunConfig, checkpoint: Path) -> str | None:
    """'already finished' when `checkpoint` is at or past the run's last step; None when steps are left."""
    step = json.loads((checkpoint / STATE / "progress.json").read_text())["step"]
    if config.train.max_steps is not None:
        total, setting = config.train.max_steps, f"train.max_steps = {config.train.max_steps}"
    else:
        from tunelab.train.recipe import data_batches, total_steps

        total, setting = total_steps(config, data_batches(config)), f"train.epochs = {config.train.epochs}"
    if step < total:
        return None
    return (f"{config.train.output_dir}: already finished ({checkpoint.name} is step {step} of {total}, "
            f"{setting}); raise it to train further with --resume latest")


def is_main_process() -> bool:
    """Rank 0 of `accelerate launch` / `torchrun` (they set RANK), or a plain single process."""
    return os.environ.get("RANK", "0") == "0"
