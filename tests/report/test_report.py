"""`tunelab report`: a run folder built from real writers (TrainLogger's TensorBoard events, a real grid rendered
from a tiny model, scoreboard/validation JSON in the demo's layout) becomes one HTML page, checked as text and as
rendered by real headless Chromium (images load, a prompt holding a <script> shows literally and never runs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab import atomic

SCRIPT_PROMPT = "<script>document.documentElement.setAttribute('data-pwned', 'yes')</script>"

GRID_TOML = """
checkpoint = "model"
prompt = "red, circle"
steps = 2
sampler = "Euler"
width = 32
height = 32
empty_prompt_as_zeros = true
out = "grid"

[x]
axis = "seed"
values = [1, 2]

[y]
axis = "prompt_sr"
values = ["red, circle", {script}]
"""

# The demo's scoreboard.json layout (toy/evaluation.py evaluate_model per model); numbers chosen to be told apart.
SCORES = {
    "base": {"per_group": {"known": 0.875, "half-known": 0.125, "unknown": 0.0, "retention": 0.92},
             "per_concept": {"red circle": 1.0, "kiko": 0.125, "zorb": 0.0, "mira": 1.0},
             "per_concept_attributes": {"red circle": 1.0, "kiko": 0.7, "zorb": 0.03, "mira": 1.0},
             "unconditional_chance": {"zorb": 0.0}, "leakage": {"zorb": 0.0085}, "samples_per_prompt": 16},
    "te-on": {"per_group": {"known": 0.75, "half-known": 0.5, "unknown": 0.4375, "retention": 0.92},
              "per_concept": {"red circle": 0.8125, "kiko": 0.5, "zorb": 0.4375, "mira": 1.0},
              "per_concept_attributes": {"red circle": 0.9, "kiko": 0.8, "zorb": 0.5, "mira": 1.0},
              "unconditional_chance": {"zorb": 0.0625}, "leakage": {"zorb": 0.1}, "samples_per_prompt": 16},
}
BANDS = [[0, 250], [250, 500], [500, 750], [750, 1000]]
BAND_LOSSES = {"base": [0.3494, 0.0629, 0.0227, 0.0071], "run-on/step-000004": [0.3841, 0.0824, 0.0309, 0.0097]}


def write_validation(path: Path) -> None:
    """validate/run.py's validation.json layout."""
    models = [{"name": name, "path": f"/models/{name}",
               "scalars": {"val/retention/mean": sum(losses) / 4,
                           **{f"val/retention/band_{k}": v for k, v in enumerate(losses)}}}
              for name, losses in BAND_LOSSES.items()]
    atomic.write_json(path, {"config": "on.toml", "seed": 0, "bands": BANDS, "sets": {"retention": 36},
                             "skipped": {"held_out": "no validation split"}, "models": models})


def write_training_events(run: Path) -> None:
    """Four steps through the trainer's own logger, validation scalars the way the validation hook logs them."""
    from tunelab.train.config import LoggingConfig
    from tunelab.train.logs import TrainLogger

    logger = TrainLogger(run / "tensorboard", LoggingConfig(histogram_every_n_steps=0), enabled=True)
    for step in range(1, 5):
        logger.step(step, loss=0.2 / step, grad_norm=1.0, lrs={"unet": 1e-5 * step}, images=4,
                    timesteps=torch.tensor([10, 500]))
        if step % 2 == 0:
            for k, value in enumerate(BAND_LOSSES["run-on/step-000004"]):
                logger.scalar(f"val/retention/band_{k}", value, step)
            logger.scalar("val/retention/mean", 0.125 + step / 1000, step)
    logger.close()


def write_grid(folder: Path) -> None:
    from tunelab.evaluate.grid import render_grid
    from tunelab.evaluate.grid_config import load_grid_config
    from tunelab.models.io import save_model
    from tunelab.models.tiny import tiny_sdxl

    save_model(tiny_sdxl(seed=0), folder / "model", format="diffusers")
    (folder / "grid.toml").write_text(GRID_TOML.format(script=json.dumps(SCRIPT_PROMPT)))
    render_grid(load_grid_config(folder / "grid.toml"), progress=False)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", "report", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    atomic.write_json(folder / "scoreboard.json", {"scores": SCORES, "timings_s": {"train_on": 50.7}})
    write_validation(folder / "validation.json")
    write_training_events(folder / "run-on")
    write_grid(folder)
    return folder


@pytest.fixture(scope="module")
def report(run_folder, tmp_path_factory) -> Path:
    """Written through the real CLI, into another folder than the run's (grid images are linked relatively)."""
    out = tmp_path_factory.mktemp("elsewhere") / "my report.html"
    result = cli(run_folder, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    return out


def test_report_shows_every_section_with_its_numbers(report):
    html = report.read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    # scoreboard: models as columns, shares as %, change vs base in points, learned / kept groups
    assert re.search(r"<th>correct share</th>\s*<th>base</th>\s*<th>te-on</th>", html)
    assert re.search(r"unknown\s+learned\s+0%\s+44%\s+\+44", text)
    assert re.search(r"known\s+kept\s+88%\s+75%\s+-12", text)  # 87.5 % → 75 %: 12.5 points lost
    assert re.search(r"other prompts drawn as zorb\s+lower is better\s+0\.9%\s+10%\s+\+9", text)
    assert "kiko" in text and "half-known concepts (should be learned)" in text
    # a loss (red) and a gain (green) are coloured differently
    assert re.search(r'rgba\(218, 54, 51, [0-9.]+\)" title="te-on: 75\.0%', html)
    assert re.search(r'rgba\(46, 160, 67, [0-9.]+\)" title="te-on: 43\.8%', html)
    # validation: each band's loss with its change against the base row, band edges as headings
    assert re.search(r"run-on/step-000004\s+0\.1268\s+\+[0-9.]+%\s+0\.3841\s+\+9\.9%\s+0\.0824\s+\+31\.0%", text)
    assert "b3: t 750–1000" in text and "skipped set held_out: no validation split" in text
    # training curves from the TensorBoard events: last step, last smoothed loss and validation mean
    smoothed = 0.2
    for step in range(2, 5):
        smoothed = 0.9 * smoothed + 0.1 * 0.2 / step
    base_mean = sum(BAND_LOSSES["base"]) / 4  # validation.json's first row: the reference of the val/ curves
    assert re.search(rf"run-on\s+4\s+{smoothed:.4f}\s+0\.1290\s+\+{100 * (0.129 / base_mean - 1):.1f}%", text)
    # grid: axis values as headings, cells linked relative to the report, infotext in the title
    assert "Seed: 1" in text and "Seed: 2" in text and "Columns: Seed; rows: Prompt S/R" in text
    assert 'src="../run0/grid/cells/z0_y1_x1.png"' in html
    assert 'title="red, circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32' in html
    # the prompt holding a <script> is text, never markup
    assert "<script>document" not in html
    assert "&lt;script&gt;document.documentElement.setAttribute(&#39;data-pwned&#39;, &#39;yes&#39;)" in html
    assert html.count("<script>") == 1  # the report's own image check


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install -y chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    result = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def rendered_dom(page: Path, profile: Path) -> str:
    return chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri(), profile=profile).stdout


def test_report_renders_in_chromium_images_load_and_the_prompt_script_never_runs(report, tmp_path):
    dom = rendered_dom(report, tmp_path / "profile")
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 2 + 4  # validation plot, training plot, 2×2 grid cells
    assert all('data-loaded="yes"' in image for image in images), [i[:120] for i in images if "yes" not in i]
    assert 'data-images-checked="6"' in dom
    assert "data-pwned" not in dom.split("<body", 1)[0]  # the <html> tag was never touched
    assert "&lt;script&gt;document.documentElement" in dom  # shown as text in the infotext list
    assert '<p id="image-status" class="missing"></p>' in dom  # no "… did not load" line

    screenshot = tmp_path / "report.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1200,2000", "--virtual-time-budget=5000",
             report.as_uri(), profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 20  # not a blank page
    green, red = np.array([46, 160, 67]), np.array([218, 54, 51])
    tinted = lambda colour: (np.abs(pixels - (255 + (colour - 255) * 0.5)).sum(-1) < 60).sum()  # noqa: E731
    assert tinted(green) > 200 and tinted(red) > 200  # the coloured changes are painted


def test_moved_images_are_flagged_on_the_page(run_folder, tmp_path):
    copy = shutil.copytree(run_folder, tmp_path / "copy")
    from tunelab.report.build import write_report

    page = write_report(copy)
    (copy / "grid" / "cells" / "z0_y0_x1.png").unlink()  # deleted after the report was written
    dom = rendered_dom(page, tmp_path / "profile")
    broken = [image for image in re.findall(r"<img [^>]*>", dom) if 'data-loaded="no"' in image]
    assert len(broken) == 1 and "z0_y0_x1.png" in broken[0] and 'class="broken"' in broken[0]
    assert "1 of 6 images did not load" in dom
    write_report(copy)  # rewritten now: the missing cell is named instead of linked
    assert "missing cells/z0_y0_x1.png" in (copy / "report.html").read_text()


def test_a_folder_with_some_inputs_gets_those_sections_and_names_the_rest(tmp_path):
    from tunelab.report.build import write_report

    write_validation(tmp_path / "validation.json")
    html = write_report(tmp_path).read_text()
    assert "Validation loss per timestep band" in html and "0.3841" in html
    assert "Concepts learned and kept" not in html and "Training curves" not in html and "Grid:" not in html
    note = re.search(r'<p class="absent">(.*?)</p>', html).group(1)
    assert note == ("Not in this folder, so not shown: scoreboard.json (concept scores); grid.json (XYZ grids); "
                    "run-*/tensorboard (training curves).")


def test_unreadable_tensorboard_events_are_named_not_plotted(tmp_path):
    from tunelab.report.build import write_report

    (tmp_path / "run-x" / "tensorboard").mkdir(parents=True)
    (tmp_path / "run-x" / "tensorboard" / "events.out.tfevents.1.host").write_bytes(bytes(range(256)) * 2)
    html = write_report(tmp_path).read_text()
    assert "run-x/tensorboard: no scalars could be read from its event files (empty or corrupt)" in html
    assert "<img" not in html


@pytest.mark.parametrize("content, problem", [
    ('{"scores": {"base": ', "not valid JSON (Expecting value at line 1, column 21)"),
    ('{"scores": {}}', "scores: Dictionary should have at least 1 item after validation, not 0"),
    ('[1, 2]', "expected a JSON object, found list"),
])
def test_bad_input_is_one_line_error_through_the_cli(tmp_path, content, problem):
    (tmp_path / "scoreboard.json").write_text(content)
    result = cli(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {tmp_path / 'scoreboard.json'}: {problem}\n"
    assert not (tmp_path / "report.html").exists()


def test_an_empty_or_missing_folder_is_an_error(tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.report.build import write_report

    with pytest.raises(TunelabError, match="nothing to report: no scoreboard.json, validation.json, grid.json"):
        write_report(tmp_path)
    with pytest.raises(TunelabError, match="not a folder"):
        write_report(tmp_path / "absent")
