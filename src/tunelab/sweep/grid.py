"""The sweep's XYZ grid (into output_dir/grid): columns = the base model and every finished variant's final model,
rows = the prompts, one grid per seed. Written as grid.toml too, so `tunelab grid output_dir/grid.toml` re-renders
it (e.g. with other prompts)."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab import atomic
from tunelab.config import parse_config
from tunelab.evaluate.grid_config import GridConfig
from tunelab.sweep.config import Sweep, SweepGridConfig
from tunelab.sweep.record import SweepRecord


def native_size(model_path: Path) -> int:
    from tunelab.models.io import load_model
    from tunelab.validate.sets import native_size as components_native_size

    return components_native_size(load_model(model_path))


def sweep_grid_config(grid: SweepGridConfig, checkpoints: list[str], out: Path, size: int | None,
                      source: str = "[grid]") -> GridConfig:
    """The GridConfig of the sweep's grid. Rows are Prompt S/R on the first non-empty prompt (which is the whole
    prompt, so each row's prompt is exactly one of `prompts`). A bad setting is a one-line error naming `source`."""
    prompts = sorted(grid.prompts, key=lambda p: p == "")  # "" cannot be searched for: never first
    settings = grid.model_dump(exclude={"prompts", "seeds"}, exclude_none=True)
    settings.setdefault("width", size)
    settings.setdefault("height", size)
    table: dict = {k: v for k, v in settings.items() if v is not None}
    table.update(prompt=prompts[0], seed=grid.seeds[0], out=str(out),
                 x={"axis": "checkpoint", "values": checkpoints})
    if len(prompts) > 1:
        table["y"] = {"axis": "prompt_sr", "values": prompts}
    if len(grid.seeds) > 1:
        table["z"] = {"axis": "seed", "values": grid.seeds}
    return parse_config(GridConfig, table, source)


def grid_checkpoints(sweep: Sweep, record: SweepRecord) -> list[str]:
    from tunelab.models.model_path import resolve_model_path

    models = [Path(sweep.base.model.path)] + [resolve_model_path(v.final_checkpoint) for v in record.finished()]
    return [str(m) for m in models]


def render_sweep_grid(sweep: Sweep, record: SweepRecord, *, progress: bool = True) -> list[Path]:
    from tunelab.evaluate.grid import render_grid

    grid = sweep.config.grid
    checkpoints = grid_checkpoints(sweep, record)
    size = None if grid.width and grid.height else native_size(Path(checkpoints[0]))
    config = sweep_grid_config(grid, checkpoints, sweep.output_dir / "grid", size)
    atomic.write_text(sweep.output_dir / "grid.toml", grid_toml(config))
    return render_grid(config, progress=progress)


def grid_toml(config: GridConfig) -> str:
    """GridConfig as GRID.toml (absolute paths; JSON spells TOML's strings, numbers and booleans)."""
    lines = ["# written by `tunelab sweep`; `tunelab grid grid.toml` re-renders it"]
    plain = config.model_dump(exclude_none=True, exclude={"x", "y", "z"})
    lines += [f"{key} = {json.dumps(value)}" for key, value in plain.items()]
    for name, axis in config.axes().items():
        lines += ["", f"[{name}]", f"axis = {json.dumps(axis.axis)}", f"values = {json.dumps(axis.values)}"]
    return "\n".join(lines) + "\n"
