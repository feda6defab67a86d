"""`tunelab report`: a run folder built from real writers (TrainLogger's TensorBoard events, a real grid rendered
from a tiny model, a scoreboard.json summarised by `tunelab score`'s own summary from per-image verdicts, findings.json
from `tunelab findings`' records, validation JSON in the demo's layout) becomes one HTML page, checked as text and as
rendered by real headless Chromium: every number with its interval, changes and verdicts, roles from the probes
file, the per-seed table, the findings first; images load, a prompt holding a <script> shows literally and never
runs; an older scoreboard is a one-line error asking to score again."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab import atomic

from headless_chromium import chromium  # tests/: on the path with its conftest

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

# The probes file the scoreboard below is scored with: its roles and groups are what the report's rows show.
PROBES_TOML = """
judge = "toy"
[sampling]
samples_per_prompt = 16
sampler = "Euler"
width = 32
height = 32

[[concepts]]
name = "zorb"
role = "target"
group = "unknown"
prompts = ["zorb"]
toy = { object = "shape", colour = "purple", shape = "star" }

[[concepts]]
name = "kiko"
role = "target"
group = "half-known"
prompts = ["kiko"]
toy = { object = "character", hair = "yellow", eyes = "blue", shirt = "red" }

[[concepts]]
name = "red circle"
role = "retain"
group = "known shapes"
prompts = ["red, circle"]
toy = { object = "shape", colour = "red", shape = "circle" }

[[concepts]]
name = "mira"
role = "retain"
group = "characters"
prompts = ["mira"]
toy = { object = "character", hair = "red", eyes = "green", shirt = "blue" }

[[concepts]]
name = "empty prompt"
role = "uncond"
"""
IMAGES = 16  # per concept (one prompt each)
# Per-image verdicts of a base and a setting trained with two seeds: images that pass, of 16 per concept; numbers
# chosen so each concept's verdict differs (learned, forgotten, kept, unclear).
PASSES = {
    "base": [{"zorb": 0, "kiko": 2, "red circle": 16, "mira": 16}],
    "te-on": [{"zorb": 11, "kiko": 3, "red circle": 5, "mira": 16},
              {"zorb": 10, "kiko": 5, "red circle": 4, "mira": 16}],
}
CONTAMINATION = {  # target → (retain images of 32, empty-prompt images of 16) that show it
    "base": [{"zorb": (0, 0), "kiko": (0, 1)}],
    "te-on": [{"zorb": (0, 0), "kiko": (2, 5)}, {"zorb": (0, 0), "kiko": (4, 7)}],
}


def hits(count: int, of: int, start: int) -> list[int]:
    """`count` passing images of `of`, from image `start` on (a seed's own images: the seeds differ image by image)."""
    return [int((i - start) % of < count) for i in range(of)]


def judged_models(setting: str):
    from tunelab.score.judged import JudgedModel

    models = []
    for seed, (passes, contamination) in enumerate(zip(PASSES[setting], CONTAMINATION[setting])):
        passed = {concept: hits(n, IMAGES, 3 * seed) for concept, n in passes.items()}
        found = {target: {"retain": hits(r, 2 * IMAGES, 5 * seed), "uncond": hits(u, IMAGES, 7 * seed)}
                 for target, (r, u) in contamination.items()}
        models.append(JudgedModel(setting, f"/models/{setting}/seed-{seed}", passed,
                                  {c: [float(v) for v in vs] for c, vs in passed.items()}, found, {}))
    return models


def write_scoreboard(folder: Path) -> dict:
    """`tunelab score`'s scoreboard.json, summarised for real from the per-image verdicts above."""
    from tunelab.score.probes import load_probes
    from tunelab.score.summary import summarise

    (folder / "probes.toml").write_text(PROBES_TOML)
    board = summarise(load_probes(folder / "probes.toml"), {s: judged_models(s) for s in PASSES})
    board.update(judge="toy", probes=str(folder / "probes.toml"), timings_s={"load_and_sample": 12.5, "judge": 0.4})
    atomic.write_json(folder / "scoreboard.json", board)
    return board


def passes(setting: str, concept: str):
    return np.array([hits(p[concept], IMAGES, 3 * seed) for seed, p in enumerate(PASSES[setting])], dtype=float)


def write_findings(path: Path) -> list[dict]:
    """findings.json as `tunelab findings` writes it (its Finding records), effects measured on the verdicts above;
    one statement per verdict the page colours."""
    from dataclasses import asdict

    from tunelab.score import intervals
    from tunelab.toy.findings import Finding

    def change(concept: str) -> dict:
        return intervals.change(passes("te-on", concept), passes("base", concept)[0]).to_dict()

    findings = [
        Finding("text encoders on: the unknown concept is learned", "zorb pass rate, te-on − base", change("zorb"),
                "holds", "not drawn for other prompts nor the empty prompt"),
        Finding("text encoders on: known concepts are kept", "red circle pass rate, te-on − base",
                change("red circle"), "does not hold", "red circle forgotten"),
        Finding("a concept the base half-knows gets fixed", "kiko pass rate, te-on − base", change("kiko"),
                "inconclusive", "more training seeds would settle it"),
        Finding("text encoders only: the content changes, not how it is drawn", "te-only − base", None,
                "not measured", "setting te-only was not scored"),
    ]
    atomic.write_json(path, {"source": "scores/scoreboard.json", "findings": [asdict(f) for f in findings]})
    return [asdict(f) for f in findings]


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
    write_scoreboard(folder)
    write_findings(folder / "findings.json")
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


@pytest.fixture(scope="module")
def dom(report, tmp_path_factory) -> str:
    """The page as real headless Chromium renders it (after its own script ran)."""
    return rendered_dom(report, tmp_path_factory.mktemp("profile"))


def test_report_shows_every_section_with_its_numbers(report, run_folder):
    html = report.read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    # scoreboard: settings as columns, the base first, a setting's training seeds counted
    assert re.search(r"<th>pass rate</th>\s*<th>base</th>\s*<th>te-on \(2 seeds\)</th>", html)
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
    cell = quote(os.path.relpath(run_folder / "grid" / "cells" / "z0_y1_x1.png", report.parent))  # any tmp names
    assert cell.startswith("../") and f'src="{cell}"' in html
    assert 'title="red, circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32' in html
    # the prompt holding a <script> is text, never markup
    assert "<script>document" not in html
    assert "&lt;script&gt;document.documentElement.setAttribute(&#39;data-pwned&#39;, &#39;yes&#39;)" in html
    assert html.count("<script>") == 1  # the report's own image check


GREEN, RED = (46, 160, 67), (218, 54, 51)  # the report's better / worse colours


def shown(estimate: dict | None) -> str:
    """How a number with its interval reads: the interval module's own format ('62% [50, 73]', '+12 [+3, +21]')."""
    from tunelab.score.intervals import Estimate

    return Estimate.from_dict(estimate).format() if estimate else "–"


def words(fragment: str) -> str:
    """The text of an HTML fragment as a reader sees it: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def table_after(dom: str, marker: str) -> list[list[str]]:
    """Rows of the first table after `marker` in the page, each row its cells' text (headings: one cell)."""
    table = re.search(r"<table[^>]*>(.*?)</table>", dom[dom.index(marker):], re.S).group(1)
    body = table.split("<tbody>", 1)[1]
    return [[words(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def expected_scoreboard_rows(board: dict) -> list[list[str]]:
    """The scoreboard table as it should read, built from scoreboard.json: each concept under its role from the
    probes file, the base's rate, each finetune's rate, change against the base and verdict."""
    base, settings = board["base"], board["settings"]

    def cell(entry: dict | None, setting: str) -> str:
        if not entry:
            return "–"
        if setting == base or not entry.get("change"):
            return shown(entry["rate"])
        return " ".join(filter(None, [shown(entry["rate"]), shown(entry["change"]),
                                      (entry.get("verdict") or {}).get("verdict", "")]))

    rows = []
    for role, heading in (("target", "targets (should be learned)"), ("retain", "retain (should be kept)")):
        rows.append([heading])
        rows += [[" ".join(filter(None, [c["name"], c["group"]]))]
                 + [cell(board["results"][s][c["name"]], s) for s in settings]
                 for c in board["concepts"] if c["role"] == role]
    rows.append(["contamination: a target drawn without being asked (lower is better)"])
    for target in [c["name"] for c in board["concepts"] if c["role"] == "target"]:
        for where, label in (("retain", "in retain prompts"), ("uncond", "from the empty prompt")):
            found = {s: board["results"][s][target]["contamination"] for s in settings}
            rows.append([f"{target} {label}"]
                        + [cell({"rate": found[s][where], "change": found[s].get(f"{where}_change")}, s)
                           for s in settings])
    rows.append(["roles: all their images pooled"])
    rows += [[role] + [cell(board["roles"][s][role], s) for s in settings] for role in ("target", "retain")]
    return rows


def test_scoreboard_shows_intervals_changes_verdicts_and_roles_from_the_file(run_folder, dom):
    board = json.loads((run_folder / "scoreboard.json").read_text())
    assert board["format"] == 2 and board["seeds"] == {"base": 1, "te-on": 2}
    rows = table_after(dom, "Concepts learned and kept")
    assert rows == expected_scoreboard_rows(board)
    # what those rows say, spelled out: real intervals (not a bare share), the empty-prompt concept judged nothing
    zorb = dict(zip(["concept", "base", "te-on"], rows[1]))
    assert zorb["concept"] == "zorb unknown" and zorb["base"].startswith("0% [0, ")
    value, low, high = (float(v) for v in re.match(r"(\d+)% \[(\d+), (\d+)\]", zorb["te-on"]).groups())
    assert value == round(100 * 21 / 32) and low < value < high  # 11 and 10 of 16 images: 66 %
    assert not any(r[0].startswith("empty prompt") for r in rows)  # an uncond concept without an expectation
    # each finetune cell ends with its verdict, and the verdict colours it: green learned / kept, red forgotten
    for concept, verdict, colour in (("zorb", "learned", GREEN), ("mira", "kept", GREEN),
                                     ("red circle", "forgotten", RED), ("kiko", "inconclusive", None)):
        assert next(r for r in rows if r[0].startswith(concept + " "))[-1].endswith(f" {verdict}")
        style = re.search(rf'<td style="([^"]*)" title="te-on: [^"]*— {verdict}: [^"]*">[^<]*<span class="change">'
                          rf'[^<]* {verdict}</span>', dom)
        assert style, verdict
        assert style.group(1) == (f"background-color: rgba({', '.join(map(str, colour))}, 0.35)" if colour else "")


def test_per_seed_table_shows_each_training_seed(run_folder, dom):
    details = re.search(r'<details class="per-seed">(.*?)</details>', dom, re.S)
    assert details and "Per training seed" in details.group(1)
    header = [words(h) for h in re.findall(r"<th>(.*?)</th>", details.group(1).split("<tbody>")[0])]
    assert header == ["pass rate", "te-on seed 1", "te-on seed 2"]
    rows = table_after(details.group(1), "<table")
    assert rows == [[concept] + [f"{seed[concept] / IMAGES:.0%}" for seed in PASSES["te-on"]]
                    for concept in ("zorb", "kiko", "red circle", "mira")]


def test_findings_come_first_one_row_per_statement_with_its_verdict(run_folder, dom):
    findings = json.loads((run_folder / "findings.json").read_text())["findings"]
    headings = [words(h) for h in re.findall(r"<h2>(.*?)</h2>", dom)]
    assert headings[0] == "Findings" and headings.index("Concepts learned and kept") == 1
    rows = re.findall(r'<tr class="finding" data-verdict="([^"]*)">(.*?)</tr>', dom, re.S)
    assert [verdict for verdict, _ in rows] == [f["verdict"] for f in findings]
    assert {f["verdict"] for f in findings} == {"holds", "does not hold", "inconclusive", "not measured"}
    for finding, (_, row) in zip(findings, rows):
        cells = [words(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        assert cells == [finding["statement"], finding["verdict"], shown(finding["effect"]), finding["comparison"],
                         finding["detail"]]
        assert f'class="verdict verdict-{finding["verdict"].replace(" ", "-")}"' in row
    assert re.search(r"Findings</h2>\s*<p class=\"source\">findings\.json: the practitioner", dom)


def rendered_dom(page: Path, profile: Path) -> str:
    return chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri(), profile=profile).stdout


def test_report_renders_in_chromium_images_load_and_the_prompt_script_never_runs(report, dom, tmp_path):
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 3 + 4  # validation plot, training plot, the run's loss-trend plot, 2×2 grid cells
    assert all('data-loaded="yes"' in image for image in images), [i[:120] for i in images if "yes" not in i]
    assert 'data-images-checked="7"' in dom
    assert "data-pwned" not in dom.split("<body", 1)[0]  # the <html> tag was never touched
    assert "&lt;script&gt;document.documentElement" in dom  # shown as text in the infotext list
    assert '<p id="image-status" class="missing"></p>' in dom  # no "… did not load" line

    screenshot = tmp_path / "report.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1200,2000", "--virtual-time-budget=5000",
             report.as_uri(), profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (2000, 1200, 3)
    assert pixels.std() > 20  # not a blank page
    green, red = np.array(GREEN), np.array(RED)
    tinted = lambda colour: (np.abs(pixels - (255 + (colour - 255) * 0.35)).sum(-1) < 20).sum()  # noqa: E731
    assert tinted(green) > 200 and tinted(red) > 200  # verdicts are painted: holds / learned green, forgotten red


def test_moved_images_are_flagged_on_the_page(run_folder, tmp_path):
    copy = shutil.copytree(run_folder, tmp_path / "copy")
    from tunelab.report.build import write_report

    page = write_report(copy)
    (copy / "grid" / "cells" / "z0_y0_x1.png").unlink()  # deleted after the report was written
    dom = rendered_dom(page, tmp_path / "profile")
    broken = [image for image in re.findall(r"<img [^>]*>", dom) if 'data-loaded="no"' in image]
    assert len(broken) == 1 and "z0_y0_x1.png" in broken[0] and 'class="broken"' in broken[0]
    assert "1 of 7 images did not load" in dom
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


@pytest.mark.parametrize("name, content, problem", [
    ("scoreboard.json", '{"format": 2, "base": ', "not valid JSON (Expecting value at line 1, column 23)"),
    ("scoreboard.json", '[1, 2]', "expected a JSON object, found list"),
    ("scoreboard.json", '{"format": 2, "base": "base", "settings": [], "concepts": [{"name": "zorb"}], "results": {}}',
     "settings: List should have at least 1 item after validation, not 0"),
    ("findings.json", '{"source": "scoreboard.json", "findings": []}',
     "findings: List should have at least 1 item after validation, not 0"),
])
def test_bad_input_is_one_line_error_through_the_cli(tmp_path, name, content, problem):
    (tmp_path / name).write_text(content)
    result = cli(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {tmp_path / name}: {problem}\n"
    assert not (tmp_path / "report.html").exists()


# What the demo wrote before scoreboards carried intervals (toy/evaluation.py's evaluate_model per model).
OLD_SCOREBOARD = {"scores": {"base": {"per_group": {"known": 0.875, "unknown": 0.0},
                                      "per_concept": {"red circle": 1.0, "zorb": 0.0},
                                      "leakage": {"zorb": 0.0085}, "samples_per_prompt": 16}},
                  "timings_s": {"train_on": 50.7}}


@pytest.mark.parametrize("board, why", [(OLD_SCOREBOARD, "an older scoreboard"),
                                        ({"format": 1, "base": "base"}, "scoreboard format 1")])
def test_an_older_scoreboard_says_to_score_again_in_one_line(tmp_path, board, why):
    atomic.write_json(tmp_path / "scoreboard.json", board)
    result = cli(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path / 'scoreboard.json'}: ") and result.stderr.count("\n") == 1
    assert why in result.stderr and "re-run `tunelab score`" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_an_empty_or_missing_folder_is_an_error(tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.report.build import write_report

    with pytest.raises(TunelabError, match="nothing to report: no scoreboard.json, validation.json, grid.json"):
        write_report(tmp_path)
    with pytest.raises(TunelabError, match="not a folder"):
        write_report(tmp_path / "absent")
