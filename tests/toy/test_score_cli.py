"""`tunelab toy score`: the toy probes file scored on the shipped base and any toy checkpoint, as a table and as
scoreboard.json (format 2: rates, paired changes with intervals, verdicts) that `tunelab report` renders."""

import json
import subprocess
import sys

from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sdxl


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_scores_base_and_a_checkpoint_and_the_report_reads_them(tmp_path):
    # an untrained tiny SDXL draws noise: it must score far below the shipped base on the concepts to keep
    save_model(tiny_sdxl(seed=0), tmp_path / "untrained.safetensors", format="single-file")
    out = tmp_path / "scores"
    result = run_cli("toy", "score", "base", tmp_path / "untrained.safetensors", "--samples", "2", "--threads", "1",
                     "--out", out)
    assert result.returncode == 0, result.stderr

    board = json.loads((out / "scoreboard.json").read_text())
    assert board["format"] == 2 and board["base"] == "base"
    assert board["settings"] == ["base", "untrained"]
    assert board["seeds"] == {"base": 1, "untrained": 1}
    roles = {c["name"]: c["role"] for c in board["concepts"]}
    assert roles["zorb"] == "target" and roles["red circle"] == "retain" and roles["empty prompt"] == "uncond"
    assert all(c["images"] == 2 * len(c["prompts"]) for c in board["concepts"] if c["role"] != "uncond")
    for name, entry in board["results"]["untrained"].items():
        rate = entry["rate"]
        assert rate["low"] <= rate["value"] <= rate["high"], name
        assert {"value", "low", "high"} <= set(entry["change"]), name
        assert entry["verdict"]["verdict"], name
    assert "verdict" not in board["results"]["base"]["red circle"]  # the base is the reference, not judged

    base_keep, untrained_keep = board["roles"]["base"]["retain"], board["roles"]["untrained"]["retain"]
    assert base_keep["rate"]["value"] >= 0.5
    assert untrained_keep["rate"]["value"] < 0.2
    assert untrained_keep["change"]["high"] < 0  # the interval of the loss excludes no change
    assert untrained_keep["verdict"]["verdict"] == "forgotten"

    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("concept"))
    assert header.split()[1:] == ["base", "untrained"]
    retain_row = next(line for line in lines if line.startswith("retain (mean)"))
    assert f"{100 * base_keep['rate']['value']:.0f}%" in retain_row
    assert f"{100 * untrained_keep['rate']['value']:.0f}%" in retain_row and "forgotten" in retain_row
    assert f"wrote {out / 'scoreboard.json'}" in result.stdout

    report = run_cli("report", out)
    assert report.returncode == 0, report.stderr
    html = (out / "report.html").read_text()
    assert "Concepts learned and kept" in html and "untrained" in html and "red circle" in html


def test_missing_model_is_one_line_error(tmp_path):
    result = run_cli("toy", "score", tmp_path / "nope.safetensors", "--samples", "2", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "nope.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "scoreboard.json").exists()
