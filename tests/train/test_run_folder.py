"""`tunelab train` never silently reuses a run folder: a re-run of a finished (or any earlier) run is refused with one
line, `--resume latest` on a finished run says it is finished and trains nothing, `--overwrite` starts again, and
a raised max_steps with `--resume latest` extends the run."""

import json
import os
import subprocess
import sys

import pytest
from tiny_run import small_sdxl
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.config import load_data_config
from tunelab.data.prepare import prepare_dataset
from tunelab.errors import TunelabError
from tunelab.models.io import save_model
from tunelab.toy.world import write_dataset

CONFIG = """
[model]
path = "base"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
[train]
output_dir = "run"
max_steps = {steps}
batch_size = 4
[checkpoint]
every_n_steps = 1
[logging]
progress_bar = false
"""


@pytest.fixture
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_dataset(root / "images", "finetune", count=4, progress=False)
    save_model(small_sdxl(), root / "base")
    config = root / "run.toml"
    config.write_text(CONFIG.format(steps=2))
    prepare_dataset(load_data_config(config), progress=False)
    train(config)
    return config


def train(config, *extra):
    result = CliRunner().invoke(app, ["train", str(config), *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def snapshot(run):
    """Every file of the run with its modification time and size."""
    return {p.relative_to(run): (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*") if p.is_file()}


def event_files(run):
    return sorted((run / "tensorboard").glob("events.out.tfevents.*"))


def test_rerun_is_refused_in_one_line_and_touches_nothing(finished_run):
    run = finished_run.parent / "run"
    before = snapshot(run)
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(finished_run)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: {run}: already holds a run (checkpoints up to step-000002); continue it "
                                     "with --resume latest, train into another train.output_dir, or pass --overwrite "
                                     "to delete it and start again")
    assert snapshot(run) == before


def test_resume_latest_on_a_finished_run_says_so_and_trains_nothing(finished_run):
    run = finished_run.parent / "run"
    before = snapshot(run)
    output = train(finished_run, "--resume", "latest")
    assert output.strip() == (f"{run}: already finished (step-000002 is step 2 of 2, train.max_steps = 2); "
                              "raise it to train further with --resume latest")
    assert snapshot(run) == before  # no run.json rewrite, no second event file


def test_overwrite_starts_again_and_resume_extends(finished_run):
    run = finished_run.parent / "run"
    first_events = event_files(run)
    (run / "run.json").write_text("{}")  # a marker: --overwrite must replace the record
    train(finished_run, "--overwrite")
    assert len(event_files(run)) == 1 and event_files(run) != first_events  # the old run's events are gone
    assert json.loads((run / "run.json").read_text())["config"]["train"]["max_steps"] == 2
    with pytest.raises(TunelabError, match="--resume and --overwrite: give one"):
        CliRunner().invoke(app, ["train", str(finished_run), "--resume", "latest", "--overwrite"],
                           catch_exceptions=False)
    longer = finished_run.with_name("longer.toml")
    longer.write_text(CONFIG.format(steps=3))
    train(longer, "--resume", "latest")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002", "step-000003"]
