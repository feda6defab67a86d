"""`tunelab sweep` with `seeds` and [score]: every setting trained once per training seed, scored as one column over
its seeds, ranked by the objective; killed while scoring, a re-run does not sample again the models already scored."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tunelab.sweep.config import load_sweep
from tunelab.sweep.scoring import rank_settings

RUN_TOML = """
[model]
path = "model/base"

[data]
index = "index.sqlite"
sources = [{ type = "folder", path = "images" }]
buckets = { resolution = 32, step = 8, min_side = 16, max_side = 64 }

[train]
max_steps = 2
batch_size = 4

[text_encoder]
learning_rate = 1e-3

[unet]
learning_rate = 1e-3

[checkpoint]
every_n_steps = 2

[logging]
progress_bar = false
histogram_every_n_steps = 0
"""

SWEEP_TOML = """
base = "run.toml"
output_dir = "out"
seeds = [0, 1]

[matrix]
"text_encoder.mode" = ["off", "on"]

[score]
probes = "probes.toml"
samples_per_prompt = 2
"""

PROBES = """
[sampling]
steps = 2
sampler = "Euler"
width = 32
height = 32
[[concepts]]
name = "zorb"
role = "target"
prompts = ["zorb"]
toy = { colour = "purple", shape = "star" }
[[concepts]]
name = "red circle"
role = "retain"
prompts = ["red, circle"]
toy = { colour = "red", shape = "circle" }
"""


def sweep_cli(root, *extra):
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", "sweep", str(root / "sweep.toml"), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.models.io import save_model
    from tunelab.models.tiny import tiny_sdxl
    from tunelab.toy.world import write_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep-score")
    save_model(tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2), root / "model" / "base")
    write_dataset(root / "images", "finetune", count=8, progress=False)
    (root / "run.toml").write_text(RUN_TOML)
    (root / "sweep.toml").write_text(SWEEP_TOML)
    (root / "probes.toml").write_text(PROBES)
    prepare_dataset(load_data_config(root / "run.toml"), progress=False)
    return root


def test_seeds_make_one_run_per_setting_and_seed(root):
    sweep = load_sweep(root / "sweep.toml")
    assert [(v.name, v.setting, v.config.train.seed) for v in sweep.variants] == [
        ("mode-off-seed0", "mode-off", 0), ("mode-off-seed1", "mode-off", 1),
        ("mode-on-seed0", "mode-on", 0), ("mode-on-seed1", "mode-on", 1)]


def test_killed_while_scoring_rerun_reuses_scored_models_and_ranks(root):
    models = root / "out" / "score" / "models"
    process = sweep_cli(root)
    deadline = time.monotonic() + 600
    while not (models / "base" / "judged.json").exists():  # training done, scoring under way
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    scored = {p.parent.relative_to(models).as_posix(): p.stat().st_mtime_ns for p in models.rglob("judged.json")}
    assert "base" in scored and len(scored) < 5  # killed before the last model was scored

    process = sweep_cli(root)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert f"reused {len(scored)} scored model(s)" in out
    for name, mtime in scored.items():  # not sampled again
        assert (models / name / "judged.json").stat().st_mtime_ns == mtime
    assert {p.parent.relative_to(models).as_posix() for p in models.rglob("judged.json")} == {
        "base", "mode-off/seed-0", "mode-off/seed-1", "mode-on/seed-0", "mode-on/seed-1"}

    board = json.loads((root / "out" / "score" / "scoreboard.json").read_text())
    assert board["seeds"] == {"base": 1, "mode-off": 2, "mode-on": 2}
    assert len(board["results"]["mode-on"]["zorb"]["per_seed"]) == 2
    table = out[out.index("which setting was best"):].splitlines()
    assert table[1].split()[:3] == ["rank", "setting", "seeds"]
    ranked = rank_settings(board)
    assert [line.split()[1] for line in table[2:4]] == [r.setting for r in ranked]
    assert all(line.split()[2] == "2" for line in table[2:4])
    assert ranked[0].objective >= ranked[1].objective or ranked[1].disqualified
    assert "report" in out and (root / "out" / "report.html").is_file()
