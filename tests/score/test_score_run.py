"""`tunelab score` end to end on tiny models: any loadable checkpoint is a column (diffusers folder or single file,
SDXL and SD1.5), the same (model, prompt, seed) gives the same image whatever else is scored, training seeds of a
setting are aggregated, and a re-run reuses every model already scored."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab.evaluate.infotext import read_png_infotext
from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sd15, tiny_sdxl
from tunelab.score.judges import make_judge
from tunelab.score.probes import load_probes
from tunelab.score.run import plan_runs, score_models

PROBES = """
judge = "toy"
[sampling]
samples_per_prompt = 2
seed = 5
steps = 2
cfg_scale = 3.0
sampler = "Euler"
width = 32
height = 32
[[concepts]]
name = "red circle"
role = "target"
prompts = ["red, circle"]
toy = { colour = "red", shape = "circle" }
[[concepts]]
name = "blue car"
role = "retain"
prompts = ["blue, car"]
toy = { object = "car", colour = "blue" }
[[concepts]]
name = "empty"
role = "uncond"
"""


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def nudged(model, seed: int):
    """The same architecture with the UNet's weights moved a little: a stand-in for a finetune."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator) * p.std().clamp(min=1e-3))
    return model


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl")
    save_model(tiny_sdxl(seed=0), folder / "base", format="diffusers")
    save_model(nudged(tiny_sdxl(seed=0), 1), folder / "ft.safetensors", format="single-file")
    save_model(nudged(tiny_sdxl(seed=0), 2), folder / "ft-seed2.safetensors", format="single-file")
    (folder / "probes.toml").write_text(PROBES)
    return folder


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_single_file_column_beside_diffusers_base_and_resume(sdxl_models):
    out = sdxl_models / "out"
    result = run_cli("score", sdxl_models / "probes.toml", "--base", sdxl_models / "base",
                     "--checkpoint", sdxl_models / "ft.safetensors", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    board = json.loads((out / "scoreboard.json").read_text())
    assert board["format"] == 2 and board["settings"] == ["base", "ft"] and board["judge"] == "toy"
    for setting in board["settings"]:
        for concept in ("red circle", "blue car"):
            rate = board["results"][setting][concept]["rate"]
            assert 0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1
    assert "change" in board["results"]["ft"]["red circle"] and "verdict" in board["results"]["ft"]["blue car"]
    assert set(board["results"]["ft"]["red circle"]["contamination"]) == {"retain", "uncond", "retain_change",
                                                                         "uncond_change"}
    image = out / "models" / "ft" / "images" / "red_circle" / "p00-s6.png"
    info = read_png_infotext(image)
    assert (info.prompt, info.seed, info.steps, info.model) == ("red, circle", 6, 2, "ft")
    assert "ft" in result.stdout.splitlines()[1] and "red circle" in result.stdout

    # a re-run samples nothing again: same probes, judge and models
    before = image.stat().st_mtime_ns
    again = run_cli("score", sdxl_models / "probes.toml", "--base", sdxl_models / "base",
                    "--checkpoint", sdxl_models / "ft.safetensors", "--out", out, "--quiet")
    assert again.returncode == 0, again.stderr
    assert "reused 2 scored model(s)" in again.stdout and "scoring" not in again.stdout
    assert image.stat().st_mtime_ns == before
    assert json.loads((out / "scoreboard.json").read_text())["results"] == board["results"]


def test_a_model_retrained_at_the_same_path_is_scored_again(sdxl_models, tmp_path):
    """A re-run reuses a model's verdicts only while its weight files are the ones scored: a finetune retrained into
    the same path (or a record from before model stamps) is sampled and judged again; the untouched base is reused."""
    probes, judge = load_probes(sdxl_models / "probes.toml"), make_judge("toy")
    save_model(nudged(tiny_sdxl(seed=0), 1), tmp_path / "ft.safetensors", format="single-file")
    runs = plan_runs(sdxl_models / "base", [("ft", tmp_path / "ft.safetensors")])
    first = score_models(probes, judge, runs, tmp_path / "out", progress=False, log=lambda _: None)
    image = tmp_path / "out" / "models" / "ft" / "images" / "red_circle" / "p00-s6.png"
    before = pixels(image)
    save_model(nudged(tiny_sdxl(seed=0), 4), tmp_path / "ft.safetensors", format="single-file")  # retrained
    messages = []
    second = score_models(probes, judge, runs, tmp_path / "out", progress=False, log=messages.append)
    assert any(m.startswith("reused 1") for m in messages) and any(m.startswith("scoring ft") for m in messages)
    assert not np.array_equal(pixels(image), before) and second["results"]["base"] == first["results"]["base"]
    record = tmp_path / "out" / "models" / "base" / "judged.json"
    older = json.loads(record.read_text())
    del older["model_stamp"]  # as an earlier tunelab wrote it
    record.write_text(json.dumps(older))
    third = []
    score_models(probes, judge, runs, tmp_path / "out", progress=False, log=third.append)
    assert any(m.startswith("reused 1") for m in third) and any(m.startswith("scoring base") for m in third)


def test_same_image_for_same_model_prompt_and_seed_whatever_else_is_scored(sdxl_models, tmp_path):
    probes, judge = load_probes(sdxl_models / "probes.toml"), make_judge("toy")
    alone = score_models(probes, judge, plan_runs(sdxl_models / "base", []), tmp_path / "alone", progress=False,
                         log=lambda _: None)
    both = score_models(probes, judge, plan_runs(sdxl_models / "base", [("ft", sdxl_models / "ft.safetensors")]),
                        tmp_path / "both", progress=False, log=lambda _: None)
    files = sorted((tmp_path / "alone" / "models" / "base" / "images").rglob("*.png"))
    assert len(files) == 3 * 2
    for file in files:
        twin = tmp_path / "both" / file.relative_to(tmp_path / "alone")
        assert np.array_equal(pixels(file), pixels(twin))
    assert alone["results"]["base"] == both["results"]["base"]
    # and a different model draws different images from the same seeds
    ft = tmp_path / "both" / "models" / "ft" / files[0].relative_to(tmp_path / "alone" / "models" / "base")
    assert not np.array_equal(pixels(files[0]), pixels(ft))


def test_training_seeds_of_one_setting_are_one_column(sdxl_models, tmp_path):
    runs = plan_runs(sdxl_models / "base", [("ft", sdxl_models / "ft.safetensors"),
                                            ("ft", sdxl_models / "ft-seed2.safetensors")])
    assert [r.folder_name for r in runs] == ["base", "ft/seed-0", "ft/seed-1"]
    board = score_models(load_probes(sdxl_models / "probes.toml"), make_judge("toy"), runs, tmp_path / "s",
                         progress=False, log=lambda _: None)
    assert board["seeds"] == {"base": 1, "ft": 2}
    entry = board["results"]["ft"]["blue car"]
    assert len(entry["per_seed"]) == 2 and entry["rate"]["n_seeds"] == 2 and entry["rate"]["covers"] == "setting"
    assert board["results"]["base"]["blue car"]["rate"]["covers"] == "checkpoint"


def test_sd15_base_with_its_own_finetune(tmp_path):
    save_model(tiny_sd15(seed=0), tmp_path / "sd15.safetensors", format="single-file")
    save_model(nudged(tiny_sd15(seed=0), 3), tmp_path / "sd15-ft", format="diffusers")
    (tmp_path / "probes.toml").write_text(PROBES)
    result = run_cli("score", tmp_path / "probes.toml", "--base", tmp_path / "sd15.safetensors",
                     "--checkpoint", f"finetune={tmp_path / 'sd15-ft'}", "--out", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    board = json.loads((tmp_path / "out" / "scoreboard.json").read_text())
    assert board["settings"] == ["base", "finetune"]
    assert len(list((tmp_path / "out" / "models" / "finetune" / "images").rglob("*.png"))) == 6


def test_missing_checkpoint_is_one_line_before_sampling(sdxl_models, tmp_path):
    result = run_cli("score", sdxl_models / "probes.toml", "--base", sdxl_models / "base",
                     "--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "nope.safetensors" in result.stderr and not (tmp_path / "out" / "models").exists()


def test_another_judge_identity_judges_the_saved_images_again_without_sampling(sdxl_models, tmp_path):
    """Changed toy rules (or a retrained tagger, other thresholds): the folder is judged again from its images."""
    from tunelab.toy.score_judge import ToyJudge

    class EarlierRules(ToyJudge):
        def identity(self) -> str:
            return "toy rules 1"

    probes = load_probes(sdxl_models / "probes.toml")
    runs = plan_runs(sdxl_models / "base", [("ft", sdxl_models / "ft.safetensors")])
    first = score_models(probes, EarlierRules(), runs, tmp_path, progress=False, log=lambda _: None)
    images = sorted((tmp_path / "models").rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in images]
    messages = []
    again = score_models(probes, make_judge("toy"), runs, tmp_path, progress=False, log=messages.append)
    assert [p.stat().st_mtime_ns for p in images] == stamps and sorted((tmp_path / "models").rglob("*.png")) == images
    assert any(m.startswith("scoring ft") for m in messages) and not any(m.startswith("reused") for m in messages)
    record = json.loads((tmp_path / "models" / "ft" / "judged.json").read_text())
    assert record["judge_identity"] == make_judge("toy").identity() != "toy rules 1"
    assert again["results"] == first["results"]  # the same rules under another name read the same images alike
    third = []
    score_models(probes, make_judge("toy"), runs, tmp_path, progress=False, log=third.append)
    assert any(m.startswith("reused 2") for m in third)
