"""`tunelab demo` (what `make demo` runs), as a short smoke run: every stage runs and writes its files."""

import json

from PIL import Image

from tunelab.demo import run_demo


def test_demo_runs_every_stage_and_writes_its_outputs(tmp_path):
    report = run_demo(tmp_path, settings=("te-off",), steps=3, batch_size=8, images=16, samples_per_prompt=2,
                      quick=True)
    board = json.loads((tmp_path / "score" / "scoreboard.json").read_text())
    assert board["format"] == 2 and board["settings"] == ["base", "te-off"] and board["judge"] == "toy"
    assert {c["role"] for c in board["concepts"]} == {"target", "retain", "uncond"}
    zorb = board["results"]["te-off"]["zorb"]
    assert zorb["rate"]["low"] <= zorb["rate"]["value"] <= zorb["rate"]["high"] and "verdict" in zorb
    assert set(zorb["contamination"]) == {"retain", "uncond", "retain_change", "uncond_change"}
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
