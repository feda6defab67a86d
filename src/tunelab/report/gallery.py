"""An XYZ grid folder (`tunelab grid`'s grid.json) as the report shows it: per z value, the labelled grid PNG and a
table of its cells (axis values as row and column headings, each cell's A1111 infotext on hover).

Images are linked where they lie, relative to the report file, not copied or inlined: real SDXL grids are large."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tunelab.config import parse_config
from tunelab.report.inputs import GridRecord

SMALL_SIDE = 128  # small cells (the toy world's 32×32) are shown enlarged to this, pixelated
LARGE_SIDE = 256  # large cells are shown shrunk to this; a click opens the full image


@dataclass
class CellView:
    src: str | None  # None: the file is missing
    file: str
    infotext: str


@dataclass
class GridView:
    title: str
    image: str | None  # the labelled grid PNG (None: missing)
    image_file: str
    column_axis: str
    row_axis: str
    columns: list[str]
    rows: list[str]
    cells: list[list[CellView]]  # [row][column]
    width: int  # display size of a cell
    height: int


def file_url(path: Path, report_folder: Path) -> str:
    """A relative URL from the report to `path` (works from disk, and when both move together)."""
    relative = os.path.relpath(path, report_folder)
    return quote(Path(relative).as_posix())


def display_size(width: int, height: int) -> tuple[int, int]:
    short = min(width, height)
    target = max(SMALL_SIDE, min(short, LARGE_SIDE))
    return round(width * target / short), round(height * target / short)


def _labels(record: GridRecord, name: str, source: Path) -> tuple[str, list[str] | None]:
    # imported here, not at the top: they import torch and diffusers (slow for a report that shows no grid)
    from tunelab.evaluate.grid import axis_label
    from tunelab.evaluate.grid_config import AXIS_TITLES, AxisConfig

    if not record.config.get(name):
        return "", None
    axis = parse_config(AxisConfig, record.config[name], f"{source}: config.{name}")
    return AXIS_TITLES[axis.axis], [axis_label(axis, value) for value in axis.values]


def grid_views(folder: Path, record: GridRecord, report_folder: Path) -> list[GridView]:
    source = folder / "grid.json"
    column_axis, columns = _labels(record, "x", source)
    row_axis, rows = _labels(record, "y", source)
    _, titles = _labels(record, "z", source)
    width, height = display_size(int(record.config.get("width", 512)), int(record.config.get("height", 512)))
    views = []
    for z in sorted({cell.z for cell in record.cells}):
        mine = [cell for cell in record.cells if cell.z == z]
        row_count, column_count = max(c.y for c in mine) + 1, max(c.x for c in mine) + 1
        table: list[list[CellView | None]] = [[None] * column_count for _ in range(row_count)]
        for cell in mine:
            path = folder / cell.file
            table[cell.y][cell.x] = CellView(file_url(path, report_folder) if path.is_file() else None, cell.file,
                                             cell.infotext)
        image_name = record.grids[z] if z < len(record.grids) else ""
        image_path = folder / image_name
        views.append(GridView(
            title=f"{folder.name}" + (f" — {titles[z]}" if titles and z < len(titles) else ""),
            image=file_url(image_path, report_folder) if image_name and image_path.is_file() else None,
            image_file=image_name, column_axis=column_axis, row_axis=row_axis,
            columns=columns or [""] * column_count, rows=rows or [""] * row_count,
            cells=[[c or CellView(None, "", "") for c in row] for row in table], width=width, height=height))
    return views

