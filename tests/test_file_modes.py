"""Every file and folder tunelab writes gets the mode a plain open() / mkdir() gives under the user's umask — never
owner-only (an A1111 / ComfyUI running as another user must read checkpoints, merges and grids) — and reaches its
name atomically (temp file or folder + rename; tests/write_audit.py watches the renames and writes). Each writer runs
as the user would run it, through the commands, under umask 022 and 077: prepare (index, skip report, latent and
text caches), train (checkpoints in both formats, state, TensorBoard, run.json), merge and convert (single file and
diffusers folder), sample, grid, report, toy dataset, and the shipped-config folders of the model cache. The demo
test (score, validation, findings) and the sweep test (sweep record, its grid config) audit theirs the same way."""

import os
import stat

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.models.config_folders import config_folder
from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sdxl
from tunelab.toy.world import write_dataset
from write_audit import audited_writes

RUN_TOML = """
[model]
path = "base"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
cache = {{ latents = true, text_embeddings = true }}
[train]
output_dir = "run-{fmt}"
max_steps = 1
batch_size = 4
[checkpoint]
format = "{fmt}"
[logging]
progress_bar = false
"""

GRID_TOML = """
prompt = "red circle"
steps = 2
width = 32
height = 32
out = "grid"
[x]
axis = "checkpoint"
values = ["base", "run-single-file/checkpoints/step-000001"]
"""


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output, result.exception)


def test_every_writer_gives_plain_modes_and_writes_atomically(tmp_path, umask, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache-home"))  # the shipped-config folders land here
    monkeypatch.chdir(tmp_path)
    inputs = [tmp_path / "images" / "broken.png", tmp_path / "grid.toml"] + [tmp_path / f"{fmt}.toml"
                                                                          for fmt in ("diffusers", "single-file")]
    with audited_writes(tmp_path) as audit:
        run("toy", "dataset", "--out", "images", "--world", "finetune", "--count", "4")
        (tmp_path / "images" / "broken.png").write_bytes(b"not a png")  # the skip report gets a line
        save_model(tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2), tmp_path / "base")
        for fmt in ("diffusers", "single-file"):
            (tmp_path / f"{fmt}.toml").write_text(RUN_TOML.format(fmt=fmt))
        run("prepare", "diffusers.toml", "--quiet")
        for fmt in ("diffusers", "single-file"):
            run("train", f"{fmt}.toml")
        run("merge", "base", "run-diffusers/checkpoints/step-000001", "--out", "merged.safetensors")
        run("merge", "base", "merged.safetensors", "--out", "merged")
        run("convert", "merged.safetensors", "converted", "--to", "diffusers")
        run("convert", "merged", "converted.safetensors", "--to", "single-file")
        run("sample", "converted.safetensors", "--prompt", "red circle", "--steps", "2", "--width", "32", "--height",
            "32", "--out", "samples")
        (tmp_path / "grid.toml").write_text(GRID_TOML)
        run("grid", "grid.toml")
        run("report", "run-diffusers")
        config_folder("sd15")  # what loading a foreign single file materialises in the model cache
    not_atomic = audit.problems(written_by_the_test=tuple(inputs))
    assert not not_atomic, "\n".join(not_atomic)

    files, folders = 0o666 & ~umask, 0o777 & ~umask
    wrong = []
    for parent, dirnames, filenames in os.walk(tmp_path):
        for name, expected in [(d, folders) for d in dirnames] + [(f, files) for f in filenames]:
            path = os.path.join(parent, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode != expected:
                wrong.append(f"{oct(mode)} {os.path.relpath(path, tmp_path)}")
    written = {os.path.relpath(os.path.join(p, f), tmp_path) for p, _, fs in os.walk(tmp_path) for f in fs}
    for expected_file in ("merged.safetensors", "converted.safetensors", "run-single-file/checkpoints/step-000001/"
                          "model.safetensors", "run-diffusers/checkpoints/step-000001/model/unet/"
                          "diffusion_pytorch_model.safetensors", "run-diffusers/report.html", "grid/grid.png",
                          "index.sqlite.skips.txt"):
        assert expected_file in written, expected_file  # each writer really wrote into the walked tree
    assert any(f.startswith("cache-home/configs/") for f in written)
    assert any(f.startswith("cache/latents/") for f in written) and any(f.startswith("cache/text/") for f in written)
    assert not wrong, f"umask {oct(umask)}: not the plain open()/mkdir() mode:\n" + "\n".join(sorted(wrong))
