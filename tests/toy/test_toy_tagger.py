"""The toy tagger: its tags say what a toy image shows, `tunelab toy tagger` writes a WD tagger folder that the
`tagger` judge loads, and that judge tags clean drawn images it never saw."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.score.judges.base import Expectation
from tunelab.score.judges.tagger import TaggerJudge
from tunelab.toy.concepts import CHARACTERS, KNOWN_COLOURS
from tunelab.toy.draw import Scene
from tunelab.toy.tagger import (
    HELD_OUT_SEED_OFFSET,
    ToyTaggerConfig,
    build_toy_tagger,
    tags_for_toy_expectation,
    visual_tags,
    vocabulary,
)
from tunelab.toy.world import make_item

# The bar for the tagger agreeing with the analytic judge on model samples; on clean drawn images, the
# easiest case, a briefly trained tagger must clear it too.
MOST = 0.9


def test_a_purple_star_is_zorb_and_purple_and_star_and_closed_eyes_carry_no_eye_colour():
    star = Scene(kind="shape", location="night", colour="purple", shape="star", outline=True)
    assert set(visual_tags(star)) == {"general", "night", "purple", "star", "zorb", "outline"}
    kiko = Scene(kind="character", location="beach", character="kiko", eyes_closed=True)
    assert set(visual_tags(kiko)) == {"general", "beach", "kiko", "yellow hair", "closed eyes", "red shirt"}
    categories = dict(vocabulary())
    assert {categories[t] for t in ("mira", "kiko", "zorb")} == {4}
    assert categories["general"] == 9 and categories["blue eyes"] == categories["car"] == 0


def test_tags_for_toy_expectation_are_what_an_image_showing_it_carries():
    assert tags_for_toy_expectation({"object": "shape", "colour": "purple", "shape": "star"}) == ["purple", "star"]
    assert tags_for_toy_expectation({"object": "car", "colour": "red"}) == ["red", "car"]
    assert tags_for_toy_expectation({"location": "forest"}) == ["forest"]
    kiko = {"object": "character", **CHARACTERS["kiko"]}
    assert tags_for_toy_expectation(kiko) == ["kiko", "yellow hair", "blue eyes", "red shirt"]
    assert "closed eyes" in tags_for_toy_expectation({"hair": "yellow", "eyes": None})
    with pytest.raises(TunelabError, match="plain"):
        tags_for_toy_expectation({"style": "plain"})
    # on drawn images: the expectation the analytic judge reads as the truth maps to tags the image carries
    known = {tag for tag, _ in vocabulary()}
    for index in range(60):
        item = make_item("vae", 3, index)
        truth = {family: label for family, label in item.attributes.items() if label is not None and family != "style"}
        tags = tags_for_toy_expectation(truth)
        assert set(tags) <= set(visual_tags(item.scene)) and set(tags) <= known, (truth, tags)


def held_out_checks(count: int, seed: int):
    """(image, the tags it shows, a wrong expectation) for clean drawn images no training run of `seed` saw."""
    rng = np.random.default_rng(0)
    for index in range(count):
        item = make_item(("vae", "base", "finetune")[index % 3], seed + HELD_OUT_SEED_OFFSET, index)
        scene = item.scene
        shown = [t for t in visual_tags(scene) if t != "general"]
        if scene.kind == "character":
            wrong = [next(n for n in CHARACTERS if n != scene.character)]
        else:  # another colour
            wrong = [str(rng.choice([c for c in KNOWN_COLOURS if c != scene.colour]))]
        yield item.image, shown, wrong


def read_tag_list(folder):
    with open(folder / "selected_tags.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_a_wd_folder_that_the_tagger_judge_loads(tmp_path):
    out = tmp_path / "tagger"
    result = CliRunner().invoke(app, ["toy", "tagger", "--out", str(out), "--images", "64", "--epochs", "1",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = read_tag_list(out)
    assert [r["name"] for r in rows] == [t.replace(" ", "_") for t, _ in vocabulary()]
    assert [int(r["category"]) for r in rows] == [c for _, c in vocabulary()]
    assert int(rows[0]["count"]) == 64  # the rating tag: on every training image
    assert (out / "toy_tagger.json").is_file()
    judge = TaggerJudge(out)
    assert judge.input_size == 32 and judge.tags == [r["name"] for r in rows]
    assert judge.read([make_item("base", 0, 0).image]).probabilities.shape == (1, len(rows))


def test_a_briefly_trained_tagger_tags_clean_held_out_images(tmp_path):
    images = 1280
    build_toy_tagger(tmp_path, ToyTaggerConfig(images=images, epochs=6, lr=0.006, width=16, held_out=20),
                     progress=False)
    counts = {r["name"]: int(r["count"]) for r in read_tag_list(tmp_path)}
    assert 0 < counts["zorb"] < counts["star"] < images  # training frequencies: every zorb is a star, not vice versa
    judge = TaggerJudge(tmp_path)
    checks = list(held_out_checks(60, seed=0))
    readings = judge.read([image for image, _, _ in checks])
    shown = [judge.verdict(readings, Expectation(tags=tuple(tags))).passed[k] for k, (_, tags, _) in enumerate(checks)]
    wrong = [judge.verdict(readings, Expectation(tags=tuple(w))).passed[k] for k, (_, _, w) in enumerate(checks)]
    assert np.mean(shown) >= MOST, f"clean held-out images with every shown tag found: {np.mean(shown):.0%}"
    assert np.mean(wrong) <= 1 - MOST, f"clean held-out images tagged with a wrong colour / character: {np.mean(wrong):.0%}"


def test_a_folder_holding_a_tagger_is_refused_before_training(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(TunelabError, match="already holds a model.onnx"):
        build_toy_tagger(tmp_path, ToyTaggerConfig(images=10_000_000))
