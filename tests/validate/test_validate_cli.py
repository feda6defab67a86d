"""`tunelab validate CONFIG --checkpoint PATH...` on models saved to disk: table, JSON, identical numbers twice."""

import json

import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.models.io import save_model


def test_validate_command_is_deterministic_and_ranks_a_damaged_checkpoint(tmp_path, small_model):
    save_model(small_model, tmp_path / "base", format="diffusers")
    with torch.no_grad():  # a "checkpoint" whose UNet was damaged
        for p in small_model.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_model(small_model, tmp_path / "run" / "checkpoints" / "step-000010" / "model", format="diffusers")
    (tmp_path / "run.toml").write_text(
        '[model]\npath = "base"\n[train]\nmax_steps = 10\noutput_dir = "run"\n'
        '[validation]\nretention_prompts = ["red, car", "mira, forest"]\nsamples_per_prompt = 2\n'
        'retention_steps = 3\nbands = 4\ncache_dir = "cache"\n')
    config = str(tmp_path / "run.toml")
    result = CliRunner().invoke(app, ["validate", config, "--checkpoint", str(tmp_path / "run/checkpoints/step-000010"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "val/retention (4 items × 4 bands)" in result.output
    assert "step-000010" in result.output and "skipped held_out: no [data] table" in result.output
    first = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert [m["name"] for m in first["models"]] == ["base", "run/step-000010"]
    assert first["bands"] == [[0, 250], [250, 500], [500, 750], [750, 1000]]
    base, damaged = (m["scalars"] for m in first["models"])
    assert damaged["val/retention/mean"] > base["val/retention/mean"]
    # a second run (retention set now from the cache), the base given as a checkpoint: identical numbers
    result = CliRunner().invoke(app, ["validate", config, "--checkpoint", str(tmp_path / "base"), "--no-base",
                                      "--out", str(tmp_path / "again.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "again.json").read_text())["models"][0]["scalars"] == base


def test_validate_command_reports_a_bad_config_in_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text('[model]\npath = "x"\n[train]\nmax_steps = 1\n[validation]\nbandz = 3\n')
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "bad.toml")])
    assert result.exit_code != 0
    assert "validation.bandz: unknown key" in str(result.exception)
