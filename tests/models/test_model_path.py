"""A trainer checkpoint folder (`RUN/checkpoints/step-N`) is accepted wherever a model is: load_model, `tunelab
info`, the model hash and a grid's checkpoint axis (`tunelab toy score` and `sample` load through load_model)."""

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.evaluate.grid import render_grid
from tunelab.evaluate.grid_config import load_grid_config
from tunelab.evaluate.infotext import model_hash, read_png_infotext
from tunelab.models.io import load_model
from tunelab.models.model_path import resolve_model_path
from tunelab.models.tiny import tiny_sdxl


def train_one_step(output_dir, checkpoint_format: str):
    """A real 1-step run of the tiny SDXL: its checkpoint folder is what `tunelab train` writes."""
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.config import RunConfig
    from tunelab.train.recipe import run_training

    config = RunConfig.model_validate({
        "model": {"path": "unused"},
        "train": {"output_dir": str(output_dir), "max_steps": 1, "batch_size": 2},
        "checkpoint": {"format": checkpoint_format},
        "logging": {"progress_bar": False, "tensorboard": False},
    })
    g = torch.Generator().manual_seed(0)
    items = {"latents": torch.randn(2, 4, 8, 8, generator=g), "captions": ["red circle", ""]}
    components = tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2)
    run_training(config, components=components, batches=InMemoryBatches(items, batch_size=2, seed=0))
    return output_dir / "checkpoints" / "step-000001"


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {fmt: train_one_step(root / f"run-{fmt}", fmt) for fmt in ("diffusers", "single-file")}


def test_step_folder_loads_the_model_inside(steps):
    for fmt, step in steps.items():
        inside = step / ("model" if fmt == "diffusers" else "model.safetensors")
        assert resolve_model_path(step) == inside
        a, b = load_model(step), load_model(inside)
        assert all(torch.equal(v, b.unet.state_dict()[k]) for k, v in a.unet.state_dict().items()), fmt
        assert model_hash(step) == model_hash(inside)  # the state/ files are not part of the model's hash


def test_info_cli_takes_a_step_folder(steps):
    result = CliRunner().invoke(app, ["info", str(steps["single-file"])])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "sdxl" in result.output.lower()


def test_grid_checkpoint_axis_takes_step_folders(steps, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(f'prompt = "red circle"\nsteps = 2\nwidth = 32\nheight = 32\nout = "out"\n[x]\n'
                      f'axis = "checkpoint"\nvalues = ["{steps["diffusers"]}", "{steps["single-file"]}"]\n')
    render_grid(load_grid_config(config), progress=False)
    assert read_png_infotext(tmp_path / "out/cells/z0_y0_x1.png").model == "run-single-file/step-000001"


def test_run_folder_and_empty_step_folder_are_one_line_errors(steps, tmp_path):
    run = steps["diffusers"].parent.parent
    with pytest.raises(TunelabError, match=r"is a training run, not a model; give one of its checkpoints, e\.g\. "
                                           r".*step-000001$"):
        load_model(run)
    (tmp_path / "step-000005" / "state").mkdir(parents=True)
    with pytest.raises(TunelabError, match="trainer checkpoint folder without its model"):
        load_model(tmp_path / "step-000005")
    (tmp_path / "photos").mkdir()
    with pytest.raises(TunelabError, match="no model_index.json"):  # any other folder: the loader's own refusal
        load_model(tmp_path / "photos")
