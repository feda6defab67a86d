"""`tunelab grid GRID.toml`: an A1111-style X/Y/Z grid with one checkpoint per column (or row, or grid).

Each checkpoint is loaded once and all of its cells are rendered together by the sampling engine (batched, same
image as alone). Written into the output folder:
  cells/z{k}_y{j}_x{i}.png   every image at its real size, with A1111 infotext (prompt, negative prompt, steps,
                             sampler, CFG scale, seed, size, model hash, model name)
  grid.png (grid_z{k}.png per z value)   the labelled grid, carrying the first cell's infotext as A1111 does
  grid.json                  resolved config, versions, and every cell's settings (for reports)"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from tunelab import __version__
from tunelab.atomic import write_json
from tunelab.evaluate.grid_config import AXIS_TITLES, AxisConfig, GridConfig
from tunelab.evaluate.grid_image import labelled_grid
from tunelab.evaluate.infotext import save_png_with_infotext
from tunelab.evaluate.samples import render_checkpoint
from tunelab.models.io import model_label
from tunelab.evaluate.sampling import SampleRequest


@dataclass(frozen=True)
class GridCell:
    z: int
    y: int
    x: int
    checkpoint: str
    request: SampleRequest

    @property
    def file(self) -> str:
        return f"cells/z{self.z}_y{self.y}_x{self.x}.png"


def axis_label(axis: AxisConfig, value) -> str:
    if axis.axis == "checkpoint":
        return model_label(value)
    if axis.axis == "prompt_sr":
        return value if value else "(empty)"
    return f"{AXIS_TITLES[axis.axis]}: {value}"


def apply_axis(axis: AxisConfig, value, checkpoint: str, request: SampleRequest) -> tuple[str, SampleRequest]:
    """One axis value applied to a cell's checkpoint and settings."""
    if axis.axis == "checkpoint":
        return value, request
    if axis.axis == "prompt_sr":
        search = axis.values[0]
        return checkpoint, request.with_(
            prompt=request.prompt.replace(search, value), negative_prompt=request.negative_prompt.replace(search, value)
        )
    return checkpoint, request.with_(**{axis.axis: value})


def plan_cells(config: GridConfig) -> list[GridCell]:
    base = SampleRequest(**config.model_dump(include={f.name for f in fields(SampleRequest)}))
    axes = config.axes()
    ranges = [range(len(axes[name].values)) if name in axes else range(1) for name in ("z", "y", "x")]
    cells = []
    for z, y, x in itertools.product(*ranges):
        checkpoint, request = config.checkpoint, base
        for name, index in (("x", x), ("y", y), ("z", z)):
            if name in axes:
                checkpoint, request = apply_axis(axes[name], axes[name].values[index], checkpoint, request)
        cells.append(GridCell(z, y, x, checkpoint, request))
    return cells


def render_grid(config: GridConfig, *, progress: bool = True) -> list[Path]:
    """Render every cell, write cells, grids and grid.json into `config.out`; return the grid image paths."""
    out = Path(config.out)
    cells = plan_cells(config)
    images: dict[GridCell, Image.Image] = {}
    hashes: dict[str, str] = {}
    cell_records = []
    for checkpoint in dict.fromkeys(cell.checkpoint for cell in cells):  # each checkpoint loaded once
        mine = [cell for cell in cells if cell.checkpoint == checkpoint]
        rendered = render_checkpoint(
            checkpoint, [cell.request for cell in mine], [out / cell.file for cell in mine], dtype=config.dtype,
            batch_size=config.batch_size, empty_prompt_as_zeros=config.empty_prompt_as_zeros, progress=progress,
        )
        hashes[checkpoint] = rendered.model_hash
        for cell, image, info in zip(mine, rendered.images, rendered.infotexts):
            images[cell] = image
            cell_records.append({"file": cell.file, "x": cell.x, "y": cell.y, "z": cell.z, "checkpoint": checkpoint,
                                 "infotext": info.to_text()})

    grid_paths = write_grid_images(config, cells, images, hashes, out)
    write_json(out / "grid.json", {
        "tunelab_version": __version__,
        "torch_version": torch.__version__,
        "config": config.model_dump(),
        "grids": [p.name for p in grid_paths],
        "cells": sorted(cell_records, key=lambda r: (r["z"], r["y"], r["x"])),
    })
    return grid_paths


def write_grid_images(config: GridConfig, cells: list[GridCell], images: dict, hashes: dict, out: Path) -> list[Path]:
    axes = config.axes()
    labels = {name: [axis_label(axes[name], v) for v in axes[name].values] if name in axes else None for name in "xyz"}
    paths = []
    for z in range(len(labels["z"]) if labels["z"] else 1):
        in_grid = [cell for cell in cells if cell.z == z]
        rows = max(cell.y for cell in in_grid) + 1
        columns = max(cell.x for cell in in_grid) + 1
        table = [[None] * columns for _ in range(rows)]
        for cell in in_grid:
            table[cell.y][cell.x] = images[cell]
        title = labels["z"][z] if labels["z"] else None
        grid = labelled_grid(table, labels["x"], labels["y"], title)
        path = out / (f"grid_z{z}.png" if labels["z"] else "grid.png")
        first = in_grid[0]
        info = first.request.infotext(model=model_label(first.checkpoint), model_hash=hashes[first.checkpoint])
        save_png_with_infotext(grid, path, info)
        paths.append(path)
    return paths
