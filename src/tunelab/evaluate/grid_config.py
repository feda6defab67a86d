"""GRID.toml for `tunelab grid`: base settings for every cell plus up to three axes (x = columns, y = rows,
z = one grid per value), as in A1111's X/Y/Z plot. Example:

    checkpoint = "base.safetensors"       # every cell's model, unless an axis is "checkpoint"
    prompt = "1girl, (red hair:1.2), masterpiece"
    negative_prompt = "lowres"
    seed = 1
    steps = 20
    cfg_scale = 7
    sampler = "Euler a"
    width = 1024
    height = 1024

    [x]
    axis = "checkpoint"                   # paths relative to this file; any loadable model
    values = ["base.safetensors", "finetune/epoch-3", "someone_elses.safetensors"]

    [y]
    axis = "prompt_sr"                    # the first value is the text searched for; each value replaces it
    values = ["red hair", "blue hair", ""]

    [z]
    axis = "seed"
    values = [1, 2]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from tunelab.config import StrictModel, load_toml_config
from tunelab.errors import TunelabError, fail
from tunelab.evaluate.samplers import check_sampler

AxisName = Literal["checkpoint", "seed", "prompt_sr", "cfg_scale", "steps", "sampler", "clip_skip"]
AXIS_TITLES = {  # A1111's names, used in labels
    "checkpoint": "Checkpoint name",
    "seed": "Seed",
    "prompt_sr": "Prompt S/R",
    "cfg_scale": "CFG Scale",
    "steps": "Steps",
    "sampler": "Sampler",
    "clip_skip": "Clip skip",
}


class AxisConfig(StrictModel):
    axis: AxisName
    values: list[Union[int, float, str]] = Field(min_length=1)

    @model_validator(mode="after")
    def _values_fit_the_axis(self) -> "AxisConfig":
        for value in self.values:
            problem = _value_problem(self.axis, value)
            if problem:
                raise ValueError(f"{self.axis} value {value!r}: {problem}")
        return self


def _value_problem(axis: str, value) -> str | None:
    if axis in ("seed", "steps", "clip_skip"):
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an integer"
        if axis != "seed" and value < 1:
            return "expected ≥ 1"
    elif axis == "cfg_scale":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
    elif not isinstance(value, str):
        return "expected a string"
    elif axis == "sampler":
        try:
            check_sampler(value)
        except TunelabError as e:  # reported as a config error (file, key, why)
            return str(e)
    return None


class GridConfig(StrictModel):
    checkpoint: Optional[str] = None
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = Field(20, ge=1)
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    width: int = Field(512, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    clip_skip: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    empty_prompt_as_zeros: bool = False  # "" → the zero embedding (models trained with captions dropped to zeros)
    dtype: Optional[Literal["fp32", "fp16", "bf16"]] = None  # dtype to load checkpoints in (default fp32)
    out: Optional[str] = None  # output folder; default: next to the TOML, named after it
    x: Optional[AxisConfig] = None
    y: Optional[AxisConfig] = None
    z: Optional[AxisConfig] = None

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        problem = _value_problem("sampler", value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _axes_make_sense(self) -> "GridConfig":
        axes = [a.axis for a in self.axes().values()]
        if len(set(axes)) != len(axes):
            raise ValueError("the same axis is used twice")
        if self.checkpoint is None and "checkpoint" not in axes:
            raise ValueError("give `checkpoint` or an axis with axis = \"checkpoint\"")
        for axis in self.axes().values():
            if axis.axis == "prompt_sr":
                search = axis.values[0]
                if search not in self.prompt and search not in self.negative_prompt:
                    raise ValueError(f"Prompt S/R: {search!r} is in neither prompt nor negative_prompt")
        return self

    def axes(self) -> dict[str, AxisConfig]:
        """The axes that are set, by position ("x", "y", "z")."""
        return {name: axis for name, axis in (("x", self.x), ("y", self.y), ("z", self.z)) if axis is not None}


def load_grid_config(path: str | Path) -> GridConfig:
    """Validate GRID.toml and make checkpoint paths and `out` absolute (relative to the TOML's folder)."""
    path = Path(path)
    config = load_toml_config(GridConfig, path)
    base = path.parent.resolve()
    resolve = lambda p: str((base / p).resolve())  # noqa: E731
    if config.checkpoint is not None:
        config.checkpoint = resolve(config.checkpoint)
    for axis in config.axes().values():
        if axis.axis == "checkpoint":
            axis.values = [resolve(v) for v in axis.values]
    for checkpoint in [config.checkpoint] + [v for a in config.axes().values() if a.axis == "checkpoint" for v in a.values]:
        if checkpoint is not None and not Path(checkpoint).exists():
            raise fail(path, f"checkpoint not found: {checkpoint}")
    config.out = resolve(config.out) if config.out else str(base / path.stem)
    return config
