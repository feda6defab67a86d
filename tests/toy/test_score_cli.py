"""`tunelab toy score`: the demo's concept judging for any toy checkpoint, as a table and as scoreboard.json."""

import json
import subprocess
import sys

from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sdxl


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_scores_base_and_a_checkpoint_and_the_report_reads_them(tmp_path):
    # an untrained tiny SDXL draws noise: it must score far below the shipped base on known concepts
    save_model(tiny_sdxl(seed=0), tmp_path / "untrained.safetensors", format="single-file")
    out = tmp_path / "scores" / "scoreboard.json"
    result = run_cli("toy", "score", "base", tmp_path / "untrained.safetensors", "--samples", "2", "--threads", "1",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header[-2:] == ["base", "untrained"]
    scores = json.loads(out.read_text())["scores"]
    assert set(scores) == {"base", "untrained"}
    assert scores["base"]["samples_per_prompt"] == 2
    assert scores["base"]["per_group"]["known"] >= 0.5 > scores["untrained"]["per_group"]["known"]
    known_row = next(line for line in result.stdout.splitlines() if line.startswith("[known]"))
    assert known_row.split()[1:] == [f"{scores[m]['per_group']['known']:.0%}" for m in ("base", "untrained")]

    report = run_cli("report", out.parent)
    assert report.returncode == 0, report.stderr
    html = (out.parent / "report.html").read_text()
    assert "Concepts learned and kept" in html and "untrained" in html


def test_missing_model_is_one_line_error(tmp_path):
    result = run_cli("toy", "score", tmp_path / "nope.safetensors", "--samples", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "nope.safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
