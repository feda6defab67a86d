"""`tunelab demo` (what `make demo` runs), as a short smoke run: every stage runs and writes its files, each one
atomically."""

import json

import numpy as np
import pytest
from PIL import Image

from tunelab.demo import run_demo
from write_audit import audited_writes


def test_demo_runs_every_stage_and_writes_its_outputs(tmp_path, capsys):
    with audited_writes(tmp_path) as audit:  # every file it writes reaches its name by a rename (tests/write_audit.py)
        report = run_demo(tmp_path, settings=("te-off",), steps=3, batch_size=8, images=16, samples_per_prompt=2,
                          quick=True)
    assert not audit.problems(), "\n".join(audit.problems())
    board = json.loads((tmp_path / "score" / "scoreboard.json").read_text())
    assert board["format"] == 2 and board["settings"] == ["base", "te-off"] and board["judge"] == "toy"
    assert {c["role"] for c in board["concepts"]} == {"target", "retain", "uncond"}
    zorb = board["results"]["te-off"]["zorb"]
    assert zorb["rate"]["low"] <= zorb["rate"]["value"] <= zorb["rate"]["high"] and "verdict" in zorb
    assert set(zorb["contamination"]) == {"retain", "uncond", "retain_change", "uncond_change"}
    # Three steps cannot teach anything, so the README's result (the unseen tag drawn after the 300-step finetune)
    # is not asserted here: `make demo` and bench/toy_sweep measure it. What this run does show: every concept is
    # scored for both models, each change is the base's images paired with the finetune's (the change of a rate is
    # the difference of the two rates, its interval around it), and the base the demo measures against knows the
    # shapes to keep — its retain interval lies above what a model that learned nothing scores.
    scored = [c["name"] for c in board["concepts"] if c["role"] != "uncond"]
    for name in scored:
        base, after = board["results"]["base"][name], board["results"]["te-off"][name]
        assert "change" not in base and "verdict" not in base  # the base is the reference
        change = after["change"]
        assert change["low"] <= change["value"] <= change["high"], name
        assert change["value"] == pytest.approx(after["rate"]["value"] - base["rate"]["value"]), name
    assert set(board["results"]["base"]) == set(board["results"]["te-off"]) == set(scored)
    keep, kept = board["roles"]["base"]["retain"]["rate"], board["roles"]["te-off"]["retain"]
    assert kept["change"]["value"] == pytest.approx(kept["rate"]["value"] - keep["value"])
    untrained = noise_rate(board)
    assert keep["low"] > untrained.high, (keep, untrained)
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert [m["name"] for m in validation["models"]] == ["base", "run-te-off/step-000003"]
    assert validation["models"][0]["scalars"]["val/retention/mean"] > 0
    grid = Image.open(report["grid"][0])
    assert "Steps: 12" in grid.text["parameters"]
    assert (tmp_path / "run-te-off" / "tensorboard").is_dir() and (tmp_path / "te-off.toml").is_file()
    findings = json.loads((tmp_path / "findings.json").read_text())["findings"]
    verdicts = {f["statement"].split(":")[0]: f["verdict"] for f in findings}
    assert len(findings) == 9 and verdicts["text encoders on"] == "not measured"  # te-on was not trained
    assert all(f["verdict"] in ("holds", "does not hold", "inconclusive") for f in findings
               if f["statement"].startswith("text encoders off"))
    assert report["timings_s"]["total"] > 0
    html = (tmp_path / "report.html").read_text()  # every section found: findings, scoreboard, validation, curves, grid
    assert "Not in this folder" not in html and "run-te-off/step-000003" in html and "cells/z0_y5_x1.png" in html
    assert html.index("<h2>Findings</h2>") < html.index("<h2>Concepts learned and kept</h2>")

    # the same demo into the same folder trains and samples nothing again; another step count replaces the run
    final = tmp_path / "run-te-off" / "checkpoints" / "step-000003"
    stamp = (final / "model" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    again = run_demo(tmp_path, settings=("te-off",), steps=3, batch_size=8, images=16, samples_per_prompt=2, quick=True)
    assert f"already trained: {final}" in capsys.readouterr().out
    assert (final / "model" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert again["scoreboard"]["reused"] == ["base", "te-off"]
    assert json.loads((tmp_path / "score" / "scoreboard.json").read_text())["results"] == board["results"]
    from tunelab.demo import train_or_reuse
    from tunelab.train.config import load_run_config

    longer = load_run_config(tmp_path / "te-off.toml").model_copy(deep=True)
    longer.train.max_steps = 4
    assert train_or_reuse(longer, 4) == tmp_path / "run-te-off" / "checkpoints" / "step-000004" / "model"
    assert "replacing it: " in capsys.readouterr().out and not final.exists()


def noise_rate(board: dict):
    """The retain pool's pass rate for a model that learned nothing (an untrained one draws noise): as many seeded
    noise images per retain concept as the demo judged, through the demo's own judge and expectations."""
    from tunelab.score import intervals
    from tunelab.score.probes import load_probes
    from tunelab.toy.score_judge import ToyJudge

    probes, judge, rng = load_probes(board["probes"]), ToyJudge(), np.random.default_rng(0)
    images = {c["name"]: c["images"] for c in board["concepts"]}
    passed, groups = [], []
    for k, concept in enumerate(probes.by_role("retain")):
        noise = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(images[concept.name])]
        passed += judge.verdict(judge.read(noise), concept.expectation()).passed.tolist()
        groups += [k] * len(noise)
    return intervals.rate(np.array(passed, dtype=float), groups=np.array(groups))


def test_toy_run_config_has_the_caption_policy_and_per_part_learning_rates(tmp_path):
    from tunelab.demo import TOY_FINETUNE_CAPTIONS, toy_run_toml
    from tunelab.train.config import load_run_config

    def config(mode, **kwargs):
        path = tmp_path / f"{mode}.toml"
        path.write_text(toy_run_toml(base=tmp_path / "base", mode=mode, steps=5, **kwargs))
        return load_run_config(path)

    on = config("on", learning_rate=1e-4, text_encoder_learning_rate=3e-5)
    assert (on.unet.learning_rate, on.text_encoder.learning_rate) == (1e-4, 3e-5)
    captions = on.data.captions
    assert captions.shuffle_caption and captions.keep_tokens == 1
    assert captions.caption_tag_dropout_rate == TOY_FINETUNE_CAPTIONS["caption_tag_dropout_rate"] > 0
    # Frozen encoders: embeddings are cached only when every epoch sees the same captions.
    assert not config("off").data.cache.text_embeddings
    written = config("off", captions={})
    assert written.data.cache.text_embeddings and not written.data.captions.shuffle_caption
    assert written.text_encoder.learning_rate == written.unet.learning_rate == 1e-5
