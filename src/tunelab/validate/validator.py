"""`Validator`: built once per run (sets encoded / generated once), then called at a cadence and at checkpoints.

    validator = Validator(run_config, components, writer=summary_writer)
    if validator.due(step):
        validator(components, step)   # → {"val/held_out/mean": ..., "val/held_out/band_0": ..., ...}

The training loop calls `validator.run(components, step, logger)` (a `TrainLogger`) instead of passing a writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from tunelab.data.config import DataConfig
from tunelab.models.components import ModelComponents
from tunelab.train.config import RunConfig
from tunelab.validate.config import ValidationConfig
from tunelab.validate.loss import band_losses
from tunelab.data.cache import weights_fingerprint
from tunelab.validate.retention import files_fingerprint, retention_set
from tunelab.validate.sets import ValidationSet, folder_set, held_out_set, native_size


def base_identity(run_config: RunConfig, base: ModelComponents | None) -> tuple[str, Callable[[], ModelComponents]]:
    """(fingerprint, loader) of the base model: its file(s) when `[model] path` exists, else the given weights."""
    path = Path(run_config.model.path)
    if path.exists():
        from tunelab.models.io import load_model

        memo = Path((run_config.validation or ValidationConfig()).cache_dir) / "file_hashes.json"
        return files_fingerprint(path, memo), (lambda: base if base is not None else load_model(path))
    if base is None:
        raise ValueError(f"{path}: base model not found and no base components given for the retention set")
    return weights_fingerprint(*base.named_parts().values()), lambda: base


def build_sets(run_config: RunConfig, components: ModelComponents, *, base: ModelComponents | None = None,
               progress: bool = True) -> tuple[list[ValidationSet], dict[str, str]]:
    """The configured sets that have items, and {set: why it is skipped} for the others."""
    config = run_config.validation or ValidationConfig()
    sets, skipped = [], {}
    if config.held_out:
        if isinstance(run_config.data, DataConfig):
            held_out = held_out_set(components, run_config.data, config.max_held_out, progress)
            if held_out.items:
                sets.append(held_out)
            else:
                skipped["held_out"] = "the dataset index has no validation split (data.split.validation_fraction = 0)"
        else:
            skipped["held_out"] = "no [data] table"
    if config.retention_prompts:
        fingerprint, load_base = base_identity(run_config, base)
        size = config.retention_size or native_size(components)
        sets.append(retention_set(config, run_config, base_fingerprint=fingerprint, load_base=load_base, size=size,
                                  progress=progress))
    else:
        skipped["retention"] = "no validation.retention_prompts"
    if config.folder is not None:
        sets.append(folder_set(components, config.folder, config.folder_size or native_size(components), progress))
    return sets, skipped


class Validator:
    """`components` is the model being trained: its (frozen) VAE encodes the image sets. `base` is the unmodified
    base model for generating the retention set; None = load `[model] path` on a retention-cache miss (the right
    choice when resuming, where `components` already hold trained weights). `sets` replaces the configured sets
    (benchmarks, experiments)."""

    def __init__(self, run_config: RunConfig, components: ModelComponents, *, base: ModelComponents | None = None,
                 writer=None, progress: bool = True, sets: list[ValidationSet] | None = None):
        self.run_config = run_config
        self.config = run_config.validation or ValidationConfig()
        self.writer = writer
        if sets is not None:
            self.sets, self.skipped = sets, {}
        elif self.config.enabled:
            self.sets, self.skipped = build_sets(run_config, components, base=base, progress=progress)
        else:
            self.sets, self.skipped = [], {"all": "validation.enabled = false"}

    def due(self, step: int, *, checkpoint: bool = False) -> bool:
        """Whether optimizer step `step` (1-based) validates: at the cadence, and at checkpoints when configured."""
        if not self.config.enabled or not self.sets:
            return False
        every = self.config.cadence(self.run_config.train.batch_size * self.run_config.train.gradient_accumulation_steps)
        return (checkpoint and self.config.at_checkpoints) or (every > 0 and step % every == 0)

    def band_losses(self, components: ModelComponents) -> dict[str, torch.Tensor]:
        """{set name: float [items, bands]}. The global RNG state is left exactly as it was."""
        with torch.random.fork_rng(devices=[]):
            return {s.name: band_losses(components, s.items, self.run_config, seed=self.config.seed,
                                        bands=self.config.bands, batch_size=self.config.batch_size)
                    for s in self.sets}

    def __call__(self, components: ModelComponents, step: int | None = None) -> dict[str, float]:
        scalars = {}
        for name, losses in self.band_losses(components).items():
            scalars[f"val/{name}/mean"] = losses.mean().item()
            for k, value in enumerate(losses.mean(dim=0).tolist()):
                scalars[f"val/{name}/band_{k}"] = value
        if self.writer is not None and step is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        return scalars

    def run(self, components: ModelComponents, step: int, logger) -> dict[str, float]:
        """The training loop's hook: validate and log every scalar through `logger.scalar(tag, value, step)`."""
        scalars = self(components)
        for tag, value in scalars.items():
            logger.scalar(tag, value, step)
        return scalars
