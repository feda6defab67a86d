"""`tunelab demo` (what `make demo` runs), as a short smoke run: every stage runs and writes its files."""

import json

from PIL import Image

from tunelab.demo import format_scoreboard, run_demo


def test_demo_runs_every_stage_and_writes_its_outputs(tmp_path):
    report = run_demo(tmp_path, modes=("off",), steps=3, batch_size=8, images=16, samples_per_prompt=1, quick=True)
    scores = json.loads((tmp_path / "scoreboard.json").read_text())["scores"]
    assert list(scores) == ["base", "te-off"]
    for model in scores.values():
        assert set(model["per_group"]) == {"known", "half-known", "unknown", "retention"}
        assert all(0.0 <= v <= 1.0 for v in model["per_concept"].values())
        assert 0.0 <= model["leakage"]["zorb"] <= 1.0
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert [m["name"] for m in validation["models"]] == ["base", "run-off/step-000003"]
    assert validation["models"][0]["scalars"]["val/retention/mean"] > 0
    grid = Image.open(report["grid"][0])
    assert "Steps: 12" in grid.text["parameters"]
    assert (tmp_path / "run-off" / "tensorboard").is_dir() and (tmp_path / "off.toml").is_file()
    table = format_scoreboard(scores)
    assert table.splitlines()[0].split()[-2:] == ["base", "te-off"] and "other prompts drawn as zorb" in table
    html = (tmp_path / "report.html").read_text()  # every section found: scoreboard, validation, curves, grid
    assert "Not in this folder" not in html and "run-off/step-000003" in html and "cells/z0_y5_x1.png" in html


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
