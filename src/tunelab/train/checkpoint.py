"""Checkpoints: the model (diffusers folder or single file, through `tunelab.models.io.save_model`) and the full
training state — trained weights at full precision, optimizer, LR scheduler, EMA, RNG states of every process,
step and data position — so `--resume` continues exactly where the run was.

A checkpoint folder is built under a temporary name and renamed when complete: a killed process leaves either a
whole checkpoint or none. Deleting one (pruning, or replacing a checkpoint of the same step) renames it out of the
way first, so a kill during the delete never leaves part of a checkpoint under a step name; what such kills leave
behind (`.step-N.tmp`, `.step-N.deleting`) is removed when the next run starts. Non-finite weights are never
written."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tunelab import atomic
from tunelab.errors import TunelabError, fail
from tunelab.models.components import ModelComponents
from tunelab.models.io import save_model
from tunelab.train.batches import DataPosition
from tunelab.train.engines import any_process
from tunelab.train.sharded_checkpoint import load_sharded, save_sharded

STATE = "state"  # sub-folder with what resume needs
SHARDED = "sharded"  # under STATE, FSDP runs: trained weights + optimizer state, one file per process (DCP)


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # data position: next micro-batch is batch `batch` of epoch `epoch`
    batch: int = 0
    nonfinite_skipped: int = 0  # optimizer steps skipped so far for a non-finite loss or gradient (train.nonfinite)

    @property
    def position(self) -> DataPosition:
        return DataPosition(self.epoch, self.batch)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def rng_states() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)  # loadable weights_only
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(parts: dict[str, torch.nn.Module], accelerator=None) -> None:
    """Raise before writing non-finite weights. Sharded weights: each process checks its shards and every
    process raises (collective), so none is left waiting for the others."""
    bad = next((f"{part_name}.{name}" for part_name, module in parts.items() for name, p in module.named_parameters()
                if not torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()), None)
    if accelerator is not None and any_process(accelerator, bad is not None):
        bad = bad or "a sharded parameter on another process"
    if bad is not None:
        raise TunelabError(f"{bad} has non-finite values; checkpoint not written")


def save_checkpoint(accelerator, output_dir: Path, progress: Progress, *, model_components: ModelComponents,
                    trained_parts: dict[str, torch.nn.Module], optimizer, lr_scheduler, ema=None, ema_parameters=None,
                    model_format: str = "diffusers", model_dtype: str | None = None, save_state: bool = True,
                    frozen: dict[str, Path] | None = None, sharded: bool = False) -> Path:
    """Collective: every process calls it (each writes its RNG state); the main process writes the rest.
    With EMA, the model is written with the EMA weights and the training state keeps the raw ones. `frozen`: parts
    kept out of memory (part name → their weights file), streamed into the model (`models.stream_save`).
    `sharded` (FSDP): `model_components` hold the gathered whole weights (main process; None on the others), and
    the trained weights and optimizer state are written shard by shard by every process (`state/sharded/`)."""
    target = checkpoint_dir(output_dir, progress.step)
    tmp = target.with_name(f".{target.name}.tmp")
    check_finite(trained_parts, accelerator)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        (tmp / STATE).mkdir(parents=True)
        model_path = tmp / ("model" if model_format == "diffusers" else "model.safetensors")
        swap = ema is not None and not sharded  # sharded: the caller gathered the EMA weights into the components
        if swap:
            ema.store(ema_parameters)
            ema.copy_to(ema_parameters)
        try:
            save_model(model_components, model_path, format=model_format, dtype=model_dtype, frozen=frozen)
        finally:
            if swap:
                ema.restore(ema_parameters)
        if save_state:
            for name, module in ({} if sharded else trained_parts).items():
                atomic.save_safetensors(tmp / STATE / f"{name}.safetensors", module.state_dict())
            with atomic.atomic_path(tmp / STATE / "optimizer.pt") as p:
                torch.save({"optimizer": None if sharded else optimizer.state_dict(),
                            "lr_scheduler": lr_scheduler.state_dict(),
                            "ema": ema_state(ema, without_weights=sharded)}, p)
            atomic.write_json(tmp / STATE / "progress.json", asdict(progress))
    accelerator.wait_for_everyone()
    if save_state and sharded:
        save_sharded(tmp / STATE / SHARDED, trained_parts, getattr(optimizer, "optimizer", optimizer),
                     ema_tensors(ema, ema_parameters, trained_parts))
    if save_state:
        with atomic.atomic_path(tmp / STATE / f"rng_{accelerator.process_index}.pt") as p:
            torch.save(rng_states(), p)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if target.exists():
            delete_checkpoint(target)
        tmp.rename(target)
    accelerator.wait_for_everyone()
    return target


def writing_checkpoint(output_dir: Path, step: int):
    """Around `save_checkpoint`: a full disk becomes one line (free space, the size of the last checkpoint, the
    last checkpoint intact) and the half-written temp folder is deleted."""
    from tunelab.disk_full import folder_bytes, one_line_when_full

    target = checkpoint_dir(output_dir, step)
    tmp = target.with_name(f".{target.name}.tmp")
    earlier = sorted(p for p in target.parent.glob("step-*") if p.name < target.name)
    intact = f"the previous checkpoint {earlier[-1].name} is intact" if earlier else "no earlier checkpoint to keep"
    return one_line_when_full(target.parent, f"writing checkpoint {target.name}", intact,
                              needed=folder_bytes(earlier[-1]) if earlier else None,
                              cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True))


def find_checkpoint(output_dir: Path, resume: str | Path) -> Path:
    """`resume` is a checkpoint folder, or "latest": the highest-step complete checkpoint of this run."""
    if str(resume) != "latest":
        path = Path(resume)
        if not (path / STATE / "progress.json").exists():
            raise fail(path, "not a checkpoint with training state (no state/progress.json)")
        return path
    candidates = sorted((Path(output_dir) / "checkpoints").glob("step-*/state/progress.json"))
    if not candidates:
        raise fail(output_dir, "--resume latest: no checkpoint with training state in this run's output folder")
    return max(candidates, key=lambda p: json.loads(p.read_text())["step"]).parent.parent


def load_checkpoint(accelerator, path: Path, *, trained_parts: dict[str, torch.nn.Module], optimizer, lr_scheduler,
                    ema=None, ema_parameters=None, sharded: bool = False) -> Progress:
    """Collective. A checkpoint of a sharded (FSDP) run resumes with any number of processes, sharded or not
    (torch.distributed.checkpoint reshards on load); one of an unsharded run resumes unsharded."""
    from safetensors.torch import load_file

    state = Path(path) / STATE
    written_sharded = (state / SHARDED).is_dir()
    if written_sharded:
        load_sharded(state / SHARDED, trained_parts, getattr(optimizer, "optimizer", optimizer),
                     ema_tensors(ema, ema_parameters, trained_parts))
    elif sharded:
        raise fail(path, "was written by an unsharded run: resume it without FSDP (a DDP or one-process launch)")
    for name, module in ({} if written_sharded else trained_parts).items():
        weights = state / f"{name}.safetensors"
        if not weights.exists():
            raise fail(path, f"has no saved weights for {name} (was it trained with another text_encoder.mode?)")
        module.load_state_dict(load_file(weights))
    saved = torch.load(state / "optimizer.pt", weights_only=True)
    if saved["optimizer"] is not None:  # None: in the shards
        optimizer.load_state_dict(saved["optimizer"])
    lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if ema is not None:
        if saved["ema"] is None:
            raise fail(path, "was saved without EMA but train.ema_decay is set")
        ema.load_state_dict(saved["ema"])
    rng = state / f"rng_{accelerator.process_index}.pt"
    if rng.exists():  # a run resumed with more processes than it had: the new ones keep their own seeds
        set_rng_states(torch.load(rng, weights_only=True))
    return Progress(**json.loads((state / "progress.json").read_text()))


def ema_state(ema, *, without_weights: bool) -> dict | None:
    """EMA's settings and step count, and (unless kept in the shards) its weights."""
    if ema is None:
        return None
    return {k: v for k, v in ema.state_dict().items() if not (without_weights and k == "shadow_params")}


def ema_tensors(ema, ema_parameters, trained_parts: dict[str, torch.nn.Module]) -> dict | None:
    """A sharded checkpoint's EMA weights, named as the UNet's parameters they follow: {"ema": {"unet.<name>": w}}
    (saved and loaded in place by torch.distributed.checkpoint)."""
    if ema is None:
        return None
    names = {id(p): f"unet.{n}" for n, p in trained_parts["unet"].named_parameters()} if "unet" in trained_parts else {}
    return {"ema": {names[id(p)]: shadow for p, shadow in zip(ema_parameters, ema.shadow_params)}}


def prune_checkpoints(output_dir: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    folders = sorted((Path(output_dir) / "checkpoints").glob("step-*"))
    for old in folders[:-keep_last]:
        delete_checkpoint(old)


def delete_checkpoint(folder: Path) -> None:
    """Rename out of the way (one atomic step), then delete: a kill in between leaves a `.deleting` folder, never a
    partial checkpoint under its step name."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


LEFTOVER_GLOBS = {".step-*.tmp": "half-written", ".step-*.deleting": "half-deleted"}


def remove_leftovers(output_dir: Path) -> list[str]:
    """Delete what a killed run left in the checkpoints folder; one line per folder removed (main process only,
    before the first step: no checkpoint is being written then)."""
    lines = []
    for pattern, what in LEFTOVER_GLOBS.items():
        for leftover in sorted((Path(output_dir) / "checkpoints").glob(pattern)):
            shutil.rmtree(leftover, ignore_errors=True)
            lines.append(f"removed {leftover}: a {what} checkpoint left by an interrupted run")
    return lines
