"""SWEEP.toml and the variants it makes. Paths in it are relative to its folder; paths inside the base run config
keep resolving against the base config's folder. Example:

    base = "run.toml"              # the run config every variant starts from
    output_dir = "runs/sweep"      # variant V trains into output_dir/V
    seeds = [0, 1, 2]              # optional: every setting trained once per training seed (V-seed0, V-seed1, …)
    [matrix]                       # the cartesian product of these dotted-key overrides
    "text_encoder.mode" = ["off", "on"]
    "unet.learning_rate" = [1e-5, 3e-5]
    [[variants]]                   # and/or named variants
    name = "te-only"
    set = { "text_encoder.mode" = "only", "text_encoder.learning_rate" = 3e-6 }
    [grid]                         # optional: one XYZ grid, base + every variant as columns
    prompts = ["1girl, kiko", "zorb", ""]
    seeds = [0, 1]
    [score]                        # optional: score base + every variant, rank the settings by it
    probes = "probes.toml"

A variant's overrides are set into the base TOML's tables before it is parsed, so a wrong key or value is the usual
one-line config error, for every variant before anything trains. Unquoted dotted keys (TOML nests them) and inline
tables are flattened into dotted keys: `set = { unet = { preset = "sdxl-68" } }` changes only `unet.preset`."""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from tunelab.config import StrictModel, load_toml_config, parse_config, read_toml
from tunelab.errors import fail
from tunelab.train.config import RunConfig

RESERVED_NAMES = {"grid", "base"}  # output_dir/grid holds the grid; "base" is the base model's row
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a folder name on every file system


class SweepGridConfig(StrictModel):
    """One XYZ grid: columns = base + variants, rows = prompts, one grid per seed. Unset values: GridConfig's
    defaults, and the base model's native size for width / height."""

    prompts: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    negative_prompt: Optional[str] = None
    steps: Optional[int] = Field(None, ge=1)
    cfg_scale: Optional[float] = None
    sampler: Optional[str] = None
    width: Optional[int] = Field(None, ge=8, multiple_of=8)
    height: Optional[int] = Field(None, ge=8, multiple_of=8)
    clip_skip: Optional[int] = Field(None, ge=1)
    batch_size: Optional[int] = Field(None, ge=1)
    empty_prompt_as_zeros: Optional[bool] = None
    dtype: Optional[Literal["fp32", "fp16", "bf16"]] = None


class SweepScoreConfig(StrictModel):
    """`tunelab score` over the base and every finished variant, and the ranking by it. Paths: relative to SWEEP.toml."""

    probes: Path
    judge: Optional[Literal["toy", "tagger", "clip"]] = None  # default: the probes file's
    judge_path: Optional[Path] = None
    samples_per_prompt: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    # rank by: mean target gain − mean retain loss (role pools' changes against the base, in points / 100)
    retain_weight: float = Field(1.0, ge=0.0)
    contamination_max: float = Field(0.10, ge=0.0, le=1.0)  # above this (point value), a variant is disqualified


class NamedVariant(StrictModel):
    name: str
    set: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(StrictModel):
    base: Path
    output_dir: Path = Path("runs/sweep")
    matrix: dict[str, Any] = Field(default_factory=dict)
    variants: list[NamedVariant] = Field(default_factory=list)
    grid: Optional[SweepGridConfig] = None
    score: Optional[SweepScoreConfig] = None
    seeds: Optional[list[int]] = Field(None, min_length=1)  # training seeds: each setting trained once per seed


@dataclass
class Variant:
    name: str
    overrides: dict[str, Any]  # dotted key → value, in the order they are applied
    config: RunConfig  # resolved; train.output_dir = <sweep output_dir>/<name>
    setting: str = ""  # the setting this run is one training seed of (= name when the sweep has no seeds list)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.train.output_dir)


@dataclass
class Sweep:
    path: Path  # the SWEEP.toml
    config: SweepConfig
    base_path: Path  # the base run config (absolute)
    base: RunConfig  # resolved, as `tunelab train BASE` would run it
    output_dir: Path  # absolute
    variants: list[Variant]


def flatten_keys(table: dict, prefix: str = "", *, leaf=lambda value: not isinstance(value, dict)) -> dict[str, Any]:
    """{"unet": {"preset": "x"}, "text_encoder.mode": "on"} → {"unet.preset": "x", "text_encoder.mode": "on"}."""
    flat = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if leaf(value):
            flat[dotted] = value
        else:
            flat.update(flatten_keys(value, f"{dotted}.", leaf=leaf))
    return flat


def deep_set(data: dict, dotted_key: str, value: Any) -> None:
    """data["a"]["b"]["c"] = value for "a.b.c", creating missing tables; a non-table on the way is an error."""
    *tables, last = dotted_key.split(".")
    node = data
    for depth, key in enumerate(tables):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{'.'.join(tables[:depth + 1])} is a value, not a table")
    node[last] = copy.deepcopy(value)


def value_text(value: Any) -> str:
    """A value as it reads in a variant name: 3e-05, on, true, 1e-05+0 (lists joined by +)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "empty"


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix (whole dotted parts) that no other key ends with."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        short[key] = suffix
    return short


def matrix_variants(matrix: dict[str, Any], source: Path) -> list[tuple[str, dict[str, Any]]]:
    """(generated name, overrides) for every combination of the matrix's values, the first key varying slowest."""
    axes = flatten_keys(matrix, leaf=lambda value: not isinstance(value, dict))
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise fail(source, f"matrix.{key}: expected a non-empty list of values")
    if not axes:
        return []
    short = short_keys(list(axes))
    combos = []
    for values in itertools.product(*axes.values()):
        overrides = dict(zip(axes, values))
        name = "_".join(f"{short[key]}-{value_text(value)}" for key, value in overrides.items())
        combos.append((name, overrides))
    return combos


def check_names(names: list[str], source: Path) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not NAME_PATTERN.match(name):
            raise fail(source, f"variant name {name!r}: use letters, digits and . _ + - (it names a folder)")
        if name.lower() in RESERVED_NAMES:
            raise fail(source, f"variant name {name!r} is reserved (output_dir/grid holds the grid; base is the base row)")
        if name.lower() in seen:
            raise fail(source, f"two variants are named {name!r}; give explicit names")
        seen[name.lower()] = name


def variant_config(base_data: dict, base_dir: Path, name: str, overrides: dict[str, Any], output_dir: Path,
                   source: Path) -> RunConfig:
    """The base TOML's tables with the overrides set in, parsed and resolved against the base config's folder."""
    data = copy.deepcopy(base_data)
    where = f"{source}: variant {name}"
    for key, value in overrides.items():
        if key == "train.output_dir":
            raise fail(where, "train.output_dir is set by the sweep (output_dir/<variant>)")
        try:
            deep_set(data, key, value)
        except ValueError as e:
            raise fail(where, f"{key}: {e}") from None
    deep_set(data, "train.output_dir", str(output_dir / name))
    return parse_config(RunConfig, data, where).resolved(base_dir)


def load_sweep(path: str | Path) -> Sweep:
    """Parse SWEEP.toml and every variant's run config: a bad key in any variant fails here, before training."""
    path = Path(path).resolve()
    config = load_toml_config(SweepConfig, path)
    base_path = (path.parent / config.base).resolve()
    base_data = read_toml(base_path)
    base = parse_config(RunConfig, base_data, base_path).resolved(base_path.parent)
    output_dir = (path.parent / config.output_dir).resolve()
    planned = matrix_variants(config.matrix, path)
    planned += [(v.name, flatten_keys(v.set)) for v in config.variants]
    if not planned:
        raise fail(path, "no variants: give a [matrix] and/or [[variants]]")
    check_names([name for name, _ in planned], path)
    if config.seeds is not None:
        if len(set(config.seeds)) < len(config.seeds):
            raise fail(path, f"seeds: {config.seeds} repeats a seed")
        if any("train.seed" in overrides for _, overrides in planned):
            raise fail(path, "a variant sets train.seed, and `seeds` sets it too: use one of them")
    runs = [(name, name, overrides) for name, overrides in planned] if config.seeds is None else [
        (f"{name}-seed{seed}", name, {**overrides, "train.seed": seed}) for name, overrides in planned
        for seed in config.seeds]
    variants = [Variant(run, overrides, variant_config(base_data, base_path.parent, run, overrides, output_dir, path),
                        setting)
                for run, setting, overrides in runs]
    if config.score is not None:
        for key in ("probes", "judge_path"):
            value = getattr(config.score, key)
            if value is not None and not value.is_absolute():
                setattr(config.score, key, (path.parent / value).resolve())
        from tunelab.score.probes import load_probes

        load_probes(config.score.probes)  # a bad probes file is found now, not after the training
    if config.grid is not None:  # a bad grid setting (e.g. a sampler name) is found now, not after the training
        from tunelab.sweep.grid import sweep_grid_config

        sweep_grid_config(config.grid, [str(base.model.path)], output_dir / "grid", 64, source=f"{path}: grid")
    return Sweep(path, config, base_path, base, output_dir, variants)
