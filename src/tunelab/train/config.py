"""The run config of `tunelab train`: tables [model] [train] [text_encoder] [unet] [loss] [optimizer] [checkpoint]
[logging] are defined here; [data] belongs to `tunelab.data.config`, [validation] to `tunelab.validate.config`.

Names follow what users know from sd-scripts / OneTrainer where the concept is the same (see FIELD.md).

    [model]
    path = "base"                      # diffusers folder or single .safetensors
    [train]
    output_dir = "runs/tte-on"
    max_steps = 300
    batch_size = 16
    [text_encoder]
    mode = "on"                        # off | on | only
    learning_rate = 1e-5               # learning_rate_te1 / _te2 override; 0 freezes that encoder
    stop_after_steps = 200
    [unet]
    learning_rate = 5e-6               # 0 freezes the UNet
    preset = "sdxl-68"                 # full | attn-only | attn-mlp | sdxl-71 | sdxl-68 | sdxl-63
    exclude = ['^mid_block\\.']      # regexes in TOML literal strings; or block names
    [loss]
    type = "huber"
    min_snr_gamma = 5
    [checkpoint]
    every_n_steps = 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from tunelab.config import StrictModel, parse_config, read_toml
from tunelab.errors import fail

try:  # owned by the data engineer
    from tunelab.data.config import DataConfig
except ImportError:  # pragma: no cover - only before the data stage exists
    DataConfig = dict  # type: ignore[misc,assignment]

try:  # owned by the validation engineer
    from tunelab.validate.config import ValidationConfig
except ImportError:
    ValidationConfig = dict  # type: ignore[misc,assignment]


class ModelConfig(StrictModel):
    path: Path  # diffusers folder or single .safetensors file
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # weights dtype while training (fp32 + mixed precision is usual)


class TrainConfig(StrictModel):
    output_dir: Path = Path("runs/train")
    seed: int = 0
    batch_size: int = Field(16, ge=1)  # per process, per micro-batch
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; wins over epochs when both are given
    epochs: int | None = Field(None, ge=1)
    max_grad_norm: float = Field(1.0, ge=0.0)  # 0 = no clipping (the norm is still measured for logs and the guard)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    # torch.compile the UNet (and text encoders that train): the first step compiles (minutes on a full-size UNet),
    # later steps may be faster on GPUs; compile time is logged and written to run.json. On CPU it rarely pays.
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"  # as sd-scripts' --dynamo_backend; aot_eager: no codegen
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)  # 0 = no EMA; e.g. 0.999
    nonfinite: Literal["stop", "skip"] = "stop"  # what a NaN/inf loss or gradient does
    # "skip": the run stops after more than this many skipped steps in a row, or in all when also more than
    # max_nonfinite_fraction of the run's steps (train/nonfinite.py)
    max_nonfinite_steps: int = Field(10, ge=0)
    max_nonfinite_fraction: float = Field(0.05, ge=0.0, le=1.0)
    empty_caption_as_zeros: bool = True  # "" captions (dropped) → the zero embedding, as SDXL samples them
    clip_skip: int | None = Field(None, ge=1)
    max_chunks: int = Field(3, ge=1)  # 75-token chunks per caption (sd-scripts max_token_length 225)
    prior_loss_weight: float = Field(1.0, ge=0.0)  # loss weight of regularisation images (sources with is_reg)

    @model_validator(mode="after")
    def _has_length(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give max_steps or epochs")
        return self


class TextEncoderConfig(StrictModel):
    mode: Literal["off", "on", "only"] = "off"  # off: frozen; on: trained with the UNet; only: UNet frozen
    learning_rate: float = Field(1e-5, ge=0.0)
    learning_rate_te1: float | None = Field(None, ge=0.0)  # per-encoder overrides; 0 freezes that encoder
    learning_rate_te2: float | None = Field(None, ge=0.0)
    stop_after_steps: int | None = Field(None, ge=0)  # text encoders frozen from this optimizer step on

    def learning_rates(self) -> list[float]:
        """[TE1, TE2] learning rates; all 0 when the mode freezes the text encoders."""
        if self.mode == "off":
            return [0.0, 0.0]
        return [self.learning_rate if lr is None else lr for lr in (self.learning_rate_te1, self.learning_rate_te2)]


UNetPreset = Literal["full", "attn-only", "attn-mlp", "sdxl-71", "sdxl-68", "sdxl-63"]


class UNetConfig(StrictModel):
    learning_rate: float = Field(1e-5, ge=0.0)  # 0 freezes the UNet (as mode "only" does)
    preset: UNetPreset = "full"
    blocks: list[str] = Field(default_factory=list)  # module-name prefixes, e.g. "down_blocks.2", "mid_block"
    include: list[str] = Field(default_factory=list)  # regexes on parameter names (re.search)
    exclude: list[str] = Field(default_factory=list)
    # sd-scripts --block_lr: one learning rate per UNet block (SDXL: 23), replacing learning_rate; 0 freezes a block
    block_lr: Optional[list[Annotated[float, Field(ge=0.0)]]] = None


class LossConfig(StrictModel):
    type: Literal["l2", "l1", "huber", "smooth_l1"] = "l2"
    huber_c: float = Field(0.1, gt=0.0)
    huber_schedule: Literal["constant", "exponential", "snr"] = "snr"
    min_snr_gamma: float | None = Field(None, gt=0.0)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # None: the model's scheduler config
    zero_terminal_snr: bool = False
    noise_offset: float = Field(0.0, ge=0.0)
    timestep_sampling: Literal["uniform", "logit_normal", "range"] = "uniform"
    min_timestep: int = Field(0, ge=0)
    max_timestep: int = Field(1000, ge=1)  # exclusive
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _timestep_range(self):
        if self.min_timestep >= self.max_timestep:
            raise ValueError("min_timestep must be < max_timestep")
        return self


class OptimizerConfig(StrictModel):
    type: Literal["adamw", "adamw8bit", "adafactor", "lion"] = "adamw"
    # AdamW's kernel: auto = fused where the device has one (CPU, CUDA), else foreach; "loop" = torch's per-tensor
    # Python loop (its CPU default)
    implementation: Literal["auto", "fused", "foreach", "loop"] = "auto"
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    lr_scheduler: Literal["constant", "linear", "cosine", "cosine_with_restarts", "polynomial"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)  # linear/cosine decay floor, as a fraction of each group's LR


class CheckpointConfig(StrictModel):
    every_n_steps: int = Field(0, ge=0)  # 0 = off
    every_n_epochs: int = Field(0, ge=0)  # 0 = off; the final step is always saved
    format: Literal["diffusers", "single-file"] = "diffusers"
    dtype: Literal["fp32", "fp16", "bf16"] | None = None  # None keeps the training dtype
    save_state: bool = True  # optimizer, scheduler, RNG and data position, for --resume
    keep_last: int | None = Field(None, ge=1)  # older step checkpoints are deleted; None keeps all


class LoggingConfig(StrictModel):
    tensorboard: bool = True
    log_every_n_steps: int = Field(1, ge=1)
    loss_smoothing: float = Field(0.9, ge=0.0, lt=1.0)  # EMA factor of the smoothed loss curve
    histogram_every_n_steps: int = Field(50, ge=0)  # timestep histogram; 0 = off
    progress_bar: bool = True
    sample_every_n_steps: int = Field(0, ge=0)  # 0 = no sample images
    sample_prompts: list[str] = Field(default_factory=list)
    sample_seeds: list[int] = Field(default_factory=lambda: [0])
    sample_steps: int = Field(20, ge=1)
    sample_cfg_scale: float = 7.0
    sample_sampler: str = "Euler a"
    sample_size: int | None = None  # pixels; None = the UNet's sample size × VAE factor


class RunConfig(StrictModel):
    model: ModelConfig
    data: Optional[DataConfig] = None  # None when a batch source is given in code (tests)
    train: TrainConfig
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    validation: Optional[ValidationConfig] = None

    def resolved(self, base_dir: Path) -> "RunConfig":
        """Paths made absolute against the TOML file's folder."""
        base_dir = Path(base_dir).resolve()
        update: dict = {
            "model": self.model.model_copy(update={"path": (base_dir / self.model.path).resolve()}),
            "train": self.train.model_copy(update={"output_dir": (base_dir / self.train.output_dir).resolve()}),
        }
        if hasattr(self.data, "resolved"):
            update["data"] = self.data.resolved(base_dir)
        if hasattr(self.validation, "resolved"):
            update["validation"] = self.validation.resolved(base_dir)
        return self.model_copy(update=update)


def load_run_config(path: str | Path) -> RunConfig:
    path = Path(path)
    return parse_config(RunConfig, read_toml(path), path).resolved(path.parent)


def require_model_path(config: RunConfig, config_file: str | Path) -> None:
    """Before a command loads the model: a missing one is named with the config file and key, not only as the
    path it resolved to."""
    if not config.model.path.exists():
        raise fail(config_file, f"[model] path: {config.model.path} not found")
