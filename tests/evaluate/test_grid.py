import numpy as np
import pytest
from PIL import Image

from tunelab.errors import TunelabError
from tunelab.evaluate.grid import plan_cells, render_grid
from tunelab.evaluate.grid_config import load_grid_config
from tunelab.evaluate.infotext import model_hash, read_png_infotext
from tunelab.evaluate.sampling import SamplingEngine
from tunelab.models.tiny import tiny_sdxl

GRID_TOML = """
prompt = "red circle, (forest:1.2)"
negative_prompt = "lowres"
steps = 3
cfg_scale = 5
sampler = "DPM++ 2M Karras"
width = 32
height = 32
batch_size = 8
out = "out"

[x]
axis = "checkpoint"
values = ["base.safetensors", "finetune"]

[y]
axis = "prompt_sr"
values = ["red circle", "blue square", ""]

[z]
axis = "seed"
values = [7, 8]
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One single-file checkpoint and one diffusers folder: any loadable model can be a column."""
    from tunelab.models.io import save_model

    folder = tmp_path_factory.mktemp("grid")
    save_model(tiny_sdxl(seed=0), folder / "base.safetensors", format="single-file")
    save_model(tiny_sdxl(seed=1), folder / "finetune", format="diffusers")
    return folder


def write_config(folder, text=GRID_TOML, name="grid.toml"):
    (folder / name).write_text(text)
    return folder / name


def test_grid_renders_each_checkpoint_once_with_infotext(checkpoints, monkeypatch):
    import tunelab.models.io as io

    loads = []
    real_load = io.load_model
    monkeypatch.setattr(io, "load_model", lambda path, **kw: loads.append(path) or real_load(path, **kw))
    config = load_grid_config(write_config(checkpoints))
    grids = render_grid(config, progress=False)

    assert sorted(map(str, loads)) == sorted([str(checkpoints / "base.safetensors"), str(checkpoints / "finetune")])
    out = checkpoints / "out"
    assert [p.name for p in grids] == ["grid_z0.png", "grid_z1.png"]
    grid = Image.open(grids[0])
    assert grid.width == 128 * 3 and grid.height > 128 * 3  # row labels + 2 columns (32 px ×4); labels on top
    assert (read_png_infotext(grids[0]).seed, read_png_infotext(grids[0]).model_hash) == (7, model_hash(checkpoints / "base.safetensors"))

    info = read_png_infotext(out / "cells/z1_y1_x1.png")  # seed 8, "blue square", finetune
    assert (info.prompt, info.negative_prompt, info.seed) == ("blue square, (forest:1.2)", "lowres", 8)
    assert (info.steps, info.sampler, info.cfg_scale, info.width, info.height) == (3, "DPM++ 2M Karras", 5.0, 32, 32)
    assert (info.model, info.model_hash) == ("finetune", model_hash(checkpoints / "finetune"))
    empty = read_png_infotext(out / "cells/z0_y2_x0.png")
    assert (empty.prompt, empty.model) == (", (forest:1.2)", "base")
    assert len(list((out / "cells").glob("*.png"))) == 12

    # a grid cell is the image the engine renders alone for those settings
    cell = next(c for c in plan_cells(config) if (c.z, c.y, c.x) == (1, 1, 1))
    alone = SamplingEngine(real_load(checkpoints / "finetune"), progress=False).render([cell.request])[0]
    stored = Image.open(out / "cells/z1_y1_x1.png")
    assert np.abs(np.asarray(stored, np.int16) - np.asarray(alone, np.int16)).max() <= 1


@pytest.mark.parametrize(
    "change, message",
    [
        (("axis = \"checkpoint\"", "axis = \"model\""), "x.axis"),
        (("values = [7, 8]", "values = [7, \"eight\"]"), "expected an integer"),
        (("sampler = \"DPM++ 2M Karras\"", "sampler = \"Euler b\""), "unknown sampler"),
        (("values = [\"red circle\", \"blue", "values = [\"green\", \"blue"), "Prompt S/R: 'green' is in neither"),
        (("\"finetune\"]", "\"missing\"]"), "checkpoint not found"),
        (("steps = 3", "step = 3"), "step: unknown key"),
    ],
)
def test_bad_grid_configs_fail_with_one_line(tmp_path, checkpoints, change, message):
    for name in ("base.safetensors", "finetune"):
        (tmp_path / name).symlink_to(checkpoints / name)
    path = write_config(tmp_path, GRID_TOML.replace(*change))
    with pytest.raises(TunelabError, match=message) as error:
        load_grid_config(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_sample_command_writes_pngs_with_infotext(checkpoints, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    result = CliRunner().invoke(app, [
        "sample", str(checkpoints / "base.safetensors"), "--prompt", "red (circle:1.2)", "--prompt", "", "--seed", "5",
        "--count", "2", "--steps", "2", "--width", "32", "--height", "32", "--sampler", "DDIM", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.glob("*.png"))
    assert files == ["0000-5.png", "0001-6.png", "0002-5.png", "0003-6.png"]
    info = read_png_infotext(tmp_path / "0001-6.png")
    assert (info.prompt, info.seed, info.sampler, info.model) == ("red (circle:1.2)", 6, "DDIM", "base")
    assert read_png_infotext(tmp_path / "0002-5.png").prompt == ""
    assert Image.open(tmp_path / "0002-5.png").size == (32, 32)


def test_every_axis_sets_its_setting():
    from tunelab.config import parse_config
    from tunelab.evaluate.grid_config import GridConfig

    config = parse_config(GridConfig, {
        "checkpoint": "m.safetensors", "prompt": "a cat", "negative_prompt": "a cat, blurry", "seed": 3,
        "x": {"axis": "steps", "values": [10, 30]},
        "y": {"axis": "sampler", "values": ["Euler", "DDIM", "DPM++ 2M Karras"]},
        "z": {"axis": "cfg_scale", "values": [4, 6.5]},
    })
    cells = {(c.z, c.y, c.x): c for c in plan_cells(config)}
    assert len(cells) == 12
    c = cells[(1, 2, 0)]
    assert (c.request.steps, c.request.sampler, c.request.cfg_scale, c.request.seed) == (10, "DPM++ 2M Karras", 6.5, 3)
    config = parse_config(GridConfig, {
        "checkpoint": "m.safetensors", "prompt": "a cat", "negative_prompt": "a cat, blurry",
        "x": {"axis": "prompt_sr", "values": ["cat", "dog"]}, "y": {"axis": "clip_skip", "values": [1, 2]},
        "z": {"axis": "seed", "values": [5, 6]},
    })
    c = next(c for c in plan_cells(config) if (c.z, c.y, c.x) == (1, 1, 1))
    assert (c.request.prompt, c.request.negative_prompt, c.request.clip_skip, c.request.seed) == (
        "a dog", "a dog, blurry", 2, 6)
    assert c.checkpoint == "m.safetensors"
