"""Grid labels stay inside their row / column: a prompt over 77 tokens is wrapped and cut with "…" at the cell's
height instead of running over the other rows; the cell's infotext keeps the whole prompt."""

import numpy as np
from PIL import Image, ImageFont

from tunelab.evaluate.grid import render_grid
from tunelab.evaluate.grid_config import load_grid_config
from tunelab.evaluate.grid_image import _fit, labelled_grid
from tunelab.evaluate.infotext import read_png_infotext
from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sdxl

LONG = ", ".join(f"tag{i} with words" for i in range(90))  # ≈ 1,400 characters, far past 77 tokens


def dark_rows(strip: np.ndarray) -> np.ndarray:
    return np.flatnonzero((strip.min(axis=2) < 128).any(axis=1))


def test_long_row_label_stays_in_its_row():
    cells = [[Image.new("RGB", (32, 32), "gray")] for _ in range(3)]  # 3 rows, 1 column, no header
    grid = np.asarray(labelled_grid(cells, None, ["short", LONG, ""]))
    cell_h, left = grid.shape[0] // 3, grid.shape[1] - 128  # 32 px cells are drawn 128 px wide
    ink = dark_rows(grid[:, :left])
    assert len(ink) and ink.min() < cell_h  # row 0's label is drawn in row 0 ...
    assert ((ink >= cell_h) & (ink < 2 * cell_h)).any()  # ... row 1's in row 1
    assert not (ink >= 2 * cell_h).any()  # and nothing of row 1's long label below it, over row 2


def test_long_column_label_is_cut_with_an_ellipsis():
    font = ImageFont.load_default(size=12)
    lines = _fit(LONG, font, 122, 4)
    assert len(lines) == 4 and lines[-1].endswith("…") and all(font.getlength(line) <= 122 for line in lines)
    assert _fit("red circle", font, 122, 4) == ["red circle"]  # short labels are untouched
    cells = [[Image.new("RGB", (32, 32), "gray")] * 2]
    grid = labelled_grid(cells, [LONG, "short"], None)
    assert grid.height <= 2 * 128  # the header is at most a cell high, not dozens of lines


def test_grid_cell_infotext_keeps_the_whole_long_prompt(tmp_path):
    save_model(tiny_sdxl(seed=0), tmp_path / "model.safetensors", format="single-file")
    (tmp_path / "grid.toml").write_text(f'checkpoint = "model.safetensors"\nprompt = "red circle"\nsteps = 1\n'
                                        f'width = 32\nheight = 32\nout = "out"\n[y]\naxis = "prompt_sr"\n'
                                        f'values = ["red circle", "{LONG}"]\n')
    render_grid(load_grid_config(tmp_path / "grid.toml"), progress=False)
    assert read_png_infotext(tmp_path / "out/cells/z0_y1_x0.png").prompt == LONG
