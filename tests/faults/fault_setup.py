"""Shared set-up of the fault suite (conftest.py exports the fixtures): a saved tiny SDXL (a diffusers folder, as
users give one), a toy-world dataset prepared with its latent cache, a run config, and `tunelab` launched through
fault_run.py as a real process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_run import small_sdxl  # noqa: E402

RUNNER = Path(__file__).with_name("fault_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

RUN_TOML = """
[model]
path = "{model}"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
cache = {cache}
[train]
output_dir = "{output_dir}"
max_steps = {steps}
batch_size = {batch_size}
[text_encoder]
mode = "off"
[unet]
learning_rate = 1e-3
[optimizer]
lr_scheduler = "cosine"
warmup_steps = 2
[checkpoint]
every_n_steps = 2
keep_last = {keep_last}
[logging]
progress_bar = false
histogram_every_n_steps = 0
"""


def save_tiny_model(folder: Path) -> Path:
    from tunelab.models.io import save_model

    torch.manual_seed(0)
    save_model(small_sdxl(), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


LATENTS = "{ latents = true, shard_items = 4 }"


def write_run(root: Path, model: Path, *, name: str = "run", output_dir: str = "run", steps: int = 6,
              batch_size: int = 2, keep_last: int = 1, cache: str = LATENTS) -> Path:
    config = root / f"{name}.toml"
    config.write_text(RUN_TOML.format(model=model, output_dir=output_dir, steps=steps, batch_size=batch_size,
                                      keep_last=keep_last, cache=cache))
    return config


def build_toy_data(root: Path, model: Path) -> Path:
    """images/ (12 toy-world images), index.sqlite and cache/latents under `root`, built by the real stages."""
    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.toy.world import write_dataset

    write_dataset(root / "images", "finetune", count=12, seed=0)
    config = write_run(root, model)
    prepare_dataset(load_data_config(config), progress=False)
    build_caches(config, progress=False)
    return root


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory, tiny_model_folder) -> Path:
    return build_toy_data(tmp_path_factory.mktemp("toy-data"), tiny_model_folder)


def copy_data(toy_data: Path, root: Path) -> Path:
    """A private copy of the prepared dataset and cache (a run may damage its own)."""
    for name in ("images", "cache"):
        shutil.copytree(toy_data / name, root / name)
    shutil.copy(toy_data / "index.sqlite", root / "index.sqlite")
    return root


def launch(cwd: Path, *tunelab_args: str, fault: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), *fault, "--", *tunelab_args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def run_tunelab(cwd: Path, *tunelab_args: str, fault: tuple[str, ...] = ()) -> tuple[int, str]:
    return finish(launch(cwd, *tunelab_args, fault=fault))


def assert_one_line_error(code: int, output: str, *needles: str) -> None:
    """Exit 2, no traceback, the message on one `error:` line holding every needle."""
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in output and len(lines) == 1, output
    assert all(n in lines[0] for n in needles), lines[0]


def same_training_state(a: Path, b: Path) -> list[str]:
    """What differs between two checkpoints' training states (trained weights, optimizer, scheduler, progress)."""
    from safetensors.torch import load_file

    differs = []
    for file in sorted(p.name for p in (a / "state").glob("*.safetensors")):
        wa, wb = load_file(a / "state" / file), load_file(b / "state" / file)
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            differs.append(file)
    sa, sb = (torch.load(p / "state/optimizer.pt", weights_only=True) for p in (a, b))
    if sa["lr_scheduler"] != sb["lr_scheduler"]:
        differs.append("lr_scheduler")
    states_a, states_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    if states_a.keys() != states_b.keys() or not states_a or any(
            not torch.equal(v, states_b[k][key]) for k, s in states_a.items() for key, v in s.items()):
        differs.append("optimizer")
    if json.loads((a / "state/progress.json").read_text()) != json.loads((b / "state/progress.json").read_text()):
        differs.append("progress")
    return differs


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` for the duration (resize with `resize_filesystem`); the test is skipped,
    with the reason, where this machine does not let it mount one (needs root or CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here to fill up: {mounted.stderr.strip() or 'mount failed'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def resize_filesystem(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def tunelab_here(cwd: Path, *args: str) -> tuple[int, str]:
    """`tunelab ARGS` through the CLI's own entry point (`main`: exit codes, one-line errors) in this process, run
    from `cwd`: (exit code, stdout and stderr)."""
    from tunelab.cli import main

    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(output), redirect_stderr(output):
        patch.chdir(cwd)
        patch.setattr(sys, "argv", ["tunelab", *args])
        with pytest.raises(SystemExit) as exited:
            main()
    return exited.value.code, output.getvalue()
