"""`tunelab sweep`: a real sweep of a tiny SDXL on a prepared toy dataset — variants trained, one failing, then
validation, grid and report; re-running skips what finished and resumes what was cut short; bad keys fail up front."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.sweep.config import load_sweep, matrix_variants, short_keys
from write_audit import audited_writes  # tests/: on the path with its conftest

RUN_TOML = """
[model]
path = "model/base"

[data]
index = "index.sqlite"
sources = [{ type = "folder", path = "images" }]
buckets = { resolution = 32, step = 8, min_side = 16, max_side = 64 }
split = { validation_fraction = 0.25 }

[train]
max_steps = 2
batch_size = 4

[text_encoder]
learning_rate = 1e-3

[unet]
learning_rate = 1e-3

[checkpoint]
every_n_steps = 1

[logging]
progress_bar = false
histogram_every_n_steps = 0

[validation]
bands = 2
max_held_out = 3
every_n_steps = 0
cache_dir = "validation_cache"
"""

SWEEP_TOML = """
base = "{base}"
output_dir = "out"

[matrix]
"text_encoder.mode" = ["off", "on"]

[[variants]]
name = "te-only"
set = {{ "text_encoder.mode" = "only", "text_encoder.learning_rate" = 1e-3 }}

[[variants]]
name = "too-hot"
set = {{ "unet.learning_rate" = 1e12 }}

[[variants]]
name = "bad-blocks"
set = {{ unet = {{ block_lr = [1e-5] }} }}

[grid]
prompts = ["red, circle"]
steps = 2
width = 32
height = 32
"""

DONE = ["mode-off", "mode-on", "te-only"]


def state_dict(model_folder, part: str) -> dict:
    from safetensors.torch import load_file

    return load_file(next((model_folder / part).glob("*.safetensors")))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A prepared base config in configs/ (its paths resolve there), the sweep file one folder up, swept once."""
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.models.io import save_model
    from tunelab.models.tiny import tiny_sdxl
    from tunelab.toy.world import write_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    configs = root / "configs"
    with audited_writes(root) as audit:  # every file written reaches its name by a rename (tests/write_audit.py)
        save_model(tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2),
                   configs / "model" / "base")
        write_dataset(configs / "images", "finetune", count=16, progress=False)
        (configs / "run.toml").write_text(RUN_TOML)
        prepare_dataset(load_data_config(configs / "run.toml"), progress=False)
        (root / "sweep.toml").write_text(SWEEP_TOML.format(base="configs/run.toml"))
        result = CliRunner().invoke(app, ["sweep", str(root / "sweep.toml"), "--quiet"])
    assert result.exit_code == 0, result.output
    not_atomic = audit.problems(written_by_the_test=(configs / "run.toml", root / "sweep.toml"))
    assert not not_atomic, "\n".join(not_atomic)
    return root, result.output


def test_variants_train_with_their_overrides_and_a_failing_one_is_recorded(swept):
    root, output = swept
    out = root / "out"
    record = json.loads((out / "sweep.json").read_text())
    status = {v["name"]: v for v in record["variants"]}
    assert [v["name"] for v in record["variants"]] == DONE + ["too-hot", "bad-blocks"]
    assert all(status[n]["status"] == "done" for n in DONE)
    assert status["bad-blocks"]["status"] == "failed" and status["too-hot"]["status"] == "failed"
    assert status["too-hot"]["reason"].startswith("step 2: loss nan")  # the trainer's NaN stop, after step 1
    assert "unet.block_lr: 1 values given" in status["bad-blocks"]["reason"]
    assert status["mode-on"]["overrides"] == {"text_encoder.mode": "on"}
    assert status["bad-blocks"]["overrides"] == {"unet.block_lr": [1e-5]}
    for name in DONE:
        final = out / name / "checkpoints" / "step-000002"
        assert status[name]["final_checkpoint"] == str(final) and (final / "model").is_dir()
        assert status[name]["wall_s"] > 0 and math.isfinite(status[name]["last_smoothed_loss"])
        run = json.loads((out / name / "run.json").read_text())["config"]
        assert run["train"]["output_dir"] == str(out / name)
        assert run["model"]["path"] == str(root / "configs" / "model" / "base")  # resolved against the base's folder
    assert json.loads((out / "te-only" / "run.json").read_text())["config"]["text_encoder"]["mode"] == "only"

    base = root / "configs" / "model" / "base"
    model = {name: out / name / "checkpoints" / "step-000002" / "model" for name in DONE}
    for part in ("text_encoder", "text_encoder_2"):
        assert same(state_dict(model["mode-off"], part), state_dict(base, part))  # frozen: bit-identical
        assert not same(state_dict(model["mode-on"], part), state_dict(base, part))
        assert not same(state_dict(model["te-only"], part), state_dict(base, part))
    assert same(state_dict(model["te-only"], "unet"), state_dict(base, "unet"))  # "only": UNet frozen
    assert not same(state_dict(model["mode-off"], "unet"), state_dict(base, "unet"))
    assert "[5/5] bad-blocks: FAILED: unet.block_lr" in output


def test_validation_grid_report_and_table_cover_base_and_every_finished_variant(swept):
    root, output = swept
    out = root / "out"
    validation = json.loads((out / "validation.json").read_text())
    assert [m["path"] for m in validation["models"]] == [str(root / "configs" / "model" / "base")] + [
        str(out / n / "checkpoints" / "step-000002") for n in DONE]
    assert validation["sets"]["held_out"] >= 1 and len(validation["bands"]) == 2
    means = [m["scalars"]["val/held_out/mean"] for m in validation["models"]]
    assert all(math.isfinite(v) for v in means) and len(set(means)) == 4  # every model measured on its own

    grid = json.loads((out / "grid" / "grid.json").read_text())
    assert grid["config"]["x"]["values"] == [str(root / "configs" / "model" / "base")] + [
        str(out / n / "checkpoints" / "step-000002" / "model") for n in DONE]
    assert sorted(c["x"] for c in grid["cells"]) == [0, 1, 2, 3]
    # the grid image shows, column by column, each model's own cell (base, then the variants in order)
    image = np.asarray(Image.open(out / "grid" / "grid.png").convert("RGB"))
    cells = {c["x"]: np.asarray(Image.open(out / "grid" / c["file"]).convert("RGB")) for c in grid["cells"]}
    assert {c.shape for c in cells.values()} == {(32, 32, 3)} and image.shape[1] % 4 == 0
    scale = image.shape[1] // 4 // 32  # cells are enlarged by a whole factor (nearest neighbour) to a readable size
    for x, cell in cells.items():
        shown = image[image.shape[0] - 32 * scale:, 32 * scale * x: 32 * scale * (x + 1)]
        assert np.array_equal(shown, cell.repeat(scale, axis=0).repeat(scale, axis=1)), f"column {x}"
    assert not np.array_equal(cells[0], cells[1])  # a trained UNet draws another image than the base

    html = (out / "report.html").read_text()
    assert all(name in html for name in DONE)

    table = output[output.index("variant"):].splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:] if line.split() and line.split()[0] in DONE + ["base", "too-hot", "bad-blocks"]}
    assert rows["base"][4] == f"{means[0]:.4f}"
    best = min(range(1, 4), key=lambda i: means[i])
    assert rows[DONE[best - 1]][4].endswith("*") and sum(r[4].endswith("*") for r in rows.values() if len(r) > 4) == 1
    change = 100 * (means[1] - means[0]) / means[0]
    assert rows["mode-off"][-1] == f"{change:+.1f}%"
    assert rows["bad-blocks"][1] == "failed" and "bad-blocks: unet.block_lr" in output


def test_rerun_skips_finished_variants_and_resumes_a_cut_short_one(swept, tmp_path):
    """The re-run changes the module's sweep folder (its paths are recorded absolute, so a copy elsewhere would be
    another sweep): the finished sweep is moved aside, a copy is cut short and re-run in its place, and the original
    is put back whatever happens, so later tests read the sweep as the fixture made it."""
    root, _ = swept
    out, original = root / "out", tmp_path / "out-as-swept"
    shutil.move(out, original)
    try:
        shutil.copytree(original, out)
        check_rerun(root, out, original)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.move(original, out)


def check_rerun(root, out, original):
    finals = {n: out / n / "checkpoints" / "step-000002" / "model" for n in DONE}
    mtimes = {n: os.stat(next(finals[n].rglob("*.safetensors"))).st_mtime_ns for n in DONE}
    shutil.rmtree(out / "mode-on" / "checkpoints" / "step-000002")  # as if killed after step 1's checkpoint
    result = CliRunner().invoke(app, ["sweep", str(root / "sweep.toml"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "[1/5] mode-off: done (already finished" in result.output
    assert "[3/5] te-only: done (already finished" in result.output
    assert "[2/5] mode-on: resuming" in result.output
    for name in ("mode-off", "te-only"):
        assert os.stat(next(finals[name].rglob("*.safetensors"))).st_mtime_ns == mtimes[name]
    status = {v["name"]: v for v in json.loads((out / "sweep.json").read_text())["variants"]}
    assert status["mode-on"]["status"] == "done" and status["mode-on"]["reason"] == "resumed from step-000001"
    uninterrupted = original / "mode-on" / "checkpoints" / "step-000002" / "model"
    for part in ("unet", "text_encoder", "text_encoder_2"):  # resumed = trained straight through, tensor for tensor
        assert same(state_dict(finals["mode-on"], part), state_dict(uninterrupted, part)), part
    assert "[4/5] too-hot: resuming" in result.output and status["too-hot"]["status"] == "failed"  # from its step 1


def test_dry_run_lists_variants_and_trainable_parameters_without_training(swept):
    root, _ = swept
    before = sorted(p.name for p in (root / "out").iterdir())
    result = CliRunner().invoke(app, ["sweep", str(root / "sweep.toml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    from tunelab.models.io import load_model

    base = load_model(root / "configs" / "model" / "base")
    unet = sum(p.numel() for p in base.unet.parameters())
    everything = unet + sum(p.numel() for te in base.text_encoders for p in te.parameters())
    assert lines[1:3] == ["mode-off: text_encoder.mode = 'off'",  # off: the whole UNet and nothing else
                          f"    total: {unet:,} of {everything:,} parameters trainable ({100 * unet / everything:.2f} %)"]
    assert "te-only: text_encoder.mode = 'only', text_encoder.learning_rate = 0.001" in lines
    assert lines[lines.index("bad-blocks: unet.block_lr = [1e-05]") + 1].startswith("    would fail: unet.block_lr: 1 values")
    percent = {name: lines[lines.index(next(l for l in lines if l.startswith(name + ":"))) + 1] for name in DONE}
    assert percent["mode-off"] != percent["mode-on"]  # the text encoders count as trainable only in mode on
    assert sorted(p.name for p in (root / "out").iterdir()) == before


def test_a_variant_folder_holding_another_run_is_not_taken_for_this_variant(swept):
    from tunelab.sweep.runner import config_conflict

    root, _ = swept
    variant = load_sweep(root / "sweep.toml").variants[2]  # te-only, finished
    assert config_conflict(variant.config) is None
    changed = variant.config.model_copy(update={"text_encoder": variant.config.text_encoder.model_copy(
        update={"learning_rate": 5e-4})})
    assert "holds a run with another text_encoder.learning_rate" in config_conflict(changed)
    # a run recorded by an older tunelab: a key added since (with its default) is no difference; a key this version
    # no longer knows is one
    run_json = variant.config.train.output_dir / "run.json"
    recorded = run_json.read_text()
    try:
        older = json.loads(recorded)
        del older["config"]["train"]["nonfinite"]
        run_json.write_text(json.dumps(older))
        assert config_conflict(variant.config) is None
        older["config"]["train"]["retired_option"] = 1
        run_json.write_text(json.dumps(older))
        assert "holds a run with another train.retired_option" in config_conflict(variant.config)
    finally:
        run_json.write_text(recorded)


def test_a_bad_override_key_fails_the_whole_sweep_before_training(swept):
    root, _ = swept
    bad = root / "bad.toml"
    bad.write_text('base = "configs/run.toml"\noutput_dir = "bad-out"\n[matrix]\n"unet.learnin_rate" = [1e-5, 1e-4]\n')
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "sweep", str(bad)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}: variant learnin_rate-1e-05: unet.learnin_rate: unknown key"]
    assert not (root / "bad-out").exists()


def test_variant_names_are_readable_unique_and_checked(tmp_path):
    assert short_keys(["text_encoder.mode", "unet.learning_rate"]) == {"text_encoder.mode": "mode",
                                                                       "unet.learning_rate": "learning_rate"}
    assert short_keys(["unet.learning_rate", "text_encoder.learning_rate"]) == {
        "unet.learning_rate": "unet.learning_rate", "text_encoder.learning_rate": "text_encoder.learning_rate"}
    names = [n for n, _ in matrix_variants({"text_encoder": {"mode": ["off", "on"]},
                                            "unet.learning_rate": [1e-5, 3e-5]}, tmp_path)]
    assert names == ["mode-off_learning_rate-1e-05", "mode-off_learning_rate-3e-05",
                     "mode-on_learning_rate-1e-05", "mode-on_learning_rate-3e-05"]
    (tmp_path / "run.toml").write_text('[model]\npath = "m"\n[train]\nmax_steps = 1\n')
    for body, problem in [
        ('[matrix]\n"unet.learning_rate" = [1e-5]\n[[variants]]\nname = "learning_rate-1e-05"\n',
         "two variants are named 'learning_rate-1e-05'"),
        ('[[variants]]\nname = "a/b"\n', "variant name 'a/b'"),
        ('[[variants]]\nname = "x"\nset = { "train.output_dir" = "elsewhere" }\n', "train.output_dir is set by the sweep"),
        ('[[variants]]\nname = "x"\nset = { "text_encoder.mode" = "sideways" }\n', "variant x: text_encoder.mode: Input"),
        ('[matrix]\n"unet.learning_rate" = 1e-5\n', "matrix.unet.learning_rate: expected a non-empty list"),
        ('[[variants]]\nname = "x"\n[grid]\nprompts = ["a"]\nsampler = "Eulr"\n', "s.toml: grid: sampler: "),
        ('', "no variants"),
    ]:
        (tmp_path / "s.toml").write_text('base = "run.toml"\n' + body)
        with pytest.raises(TunelabError, match=problem.replace("(", r"\(").replace("+", r"\+")):
            load_sweep(tmp_path / "s.toml")


def test_readme_sweep_example_loads_against_the_readme_run_config(tmp_path):
    import re
    from pathlib import Path

    blocks = re.findall(r"```toml\n(.*?)```", (Path(__file__).parents[2] / "README.md").read_text(), re.S)
    (tmp_path / "run.toml").write_text(blocks[0])
    (tmp_path / "sweep.toml").write_text(next(b for b in blocks if "[matrix]" in b))
    sweep = load_sweep(tmp_path / "sweep.toml")
    assert [v.name for v in sweep.variants] == [
        "mode-off_learning_rate-1e-06", "mode-off_learning_rate-2e-06", "mode-on_learning_rate-1e-06",
        "mode-on_learning_rate-2e-06", "te-only"]
    only = sweep.variants[-1].config
    assert (only.text_encoder.mode, only.text_encoder.learning_rate, only.unet.preset) == ("only", 3e-6, "sdxl-71")
    assert only.train.output_dir == tmp_path / "runs" / "sweep" / "te-only"


def test_an_unprepared_dataset_is_reported_once_before_training(tmp_path):
    from tunelab.sweep.runner import run_sweep

    (tmp_path / "run.toml").write_text('[model]\npath = "m"\n[data]\nsources = [{ type = "folder", path = "images" }]\n'
                                       '[train]\nmax_steps = 1\n')
    (tmp_path / "s.toml").write_text('base = "run.toml"\n[matrix]\n"text_encoder.mode" = ["off", "on"]\n')
    with pytest.raises(TunelabError, match=r"variant mode-off: dataset index .* not found \(run `tunelab prepare"):
        run_sweep(load_sweep(tmp_path / "s.toml"))
    assert not (tmp_path / "runs").exists()
