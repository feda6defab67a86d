"""The `[validation]` table of a run config: which sets are measured, how often, and how the loss is sampled.

Defaults keep the cost of validation during training at a few percent of wall time (`bench/validation_cost.py`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tunelab.config import StrictModel


class ValidationConfig(StrictModel):
    enabled: bool = True
    bands: int = Field(8, ge=1, le=1000)  # timestep bands over the whole schedule; one timestep per band and item
    every_n_steps: int | None = Field(None, ge=0)  # during training; 0 = only at checkpoints; None = every_n_images
    # Default cadence in training images (per process): 500 steps at batch 16, 2000 at batch 4 — a step's cost grows
    # with its batch while a validation's does not, so a fixed step cadence would cost small-batch runs far more.
    every_n_images: int = Field(8000, ge=1)
    at_checkpoints: bool = True
    seed: int = 0  # seeds each item's noise and timesteps, independently of the training seed
    batch_size: int = Field(32, ge=1)  # (item, band) pairs per UNet forward

    # (a) held-out: the dataset index's validation split ([data] split.validation_fraction / validation_folder)
    held_out: bool = True
    max_held_out: int | None = Field(64, ge=1)  # first N items of the split by id; None = all

    # (b) retention: what the *base* model draws from these prompts (concepts that must survive the finetune)
    retention_prompts: list[str] = Field(default_factory=list)
    samples_per_prompt: int = Field(4, ge=1)
    retention_steps: int = Field(16, ge=1)
    retention_sampler: str = "DPM++ 2M"
    retention_cfg_scale: float = Field(5.0, ge=0.0)
    retention_size: int | None = Field(None, ge=8)  # pixels (square); None = the UNet's native size
    cache_dir: Path = Path("validation_cache")  # retention latents, keyed by base model + prompts + settings

    # (c) any folder of images with `.txt` / `.caption` sidecars
    folder: Path | None = None
    folder_size: int | None = Field(None, ge=8)  # square size (pixels) the folder's images are centre-cropped to

    def cadence(self, images_per_step: int) -> int:
        """Validate every this many optimizer steps (0 = never at a cadence)."""
        if self.every_n_steps is not None:
            return self.every_n_steps
        return max(1, round(self.every_n_images / images_per_step))

    def resolved(self, base_dir: Path) -> "ValidationConfig":
        base_dir = Path(base_dir).resolve()
        update = {"cache_dir": (base_dir / self.cache_dir).resolve()}
        if self.folder is not None:
            update["folder"] = (base_dir / self.folder).resolve()
        return self.model_copy(update=update)
