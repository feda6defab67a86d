"""Contamination: a target's expectation checked on images drawn for other prompts. The toy judge must find the
unknown concept (a purple star) in every image that shows it and in no image that does not — including the two
half-matches, a star of another colour and a purple shape of another kind, which only earn partial credit."""

import numpy as np
import pytest
from PIL import Image

from tunelab.score.judges.base import Expectation
from tunelab.toy.draw import render
from tunelab.toy.score_judge import ToyJudge
from tunelab.toy.world import car_scene, character_scene, shape_scene, unknown_scene

LOCATIONS = ("beach", "forest", "night", "white background")


def drawn(scene) -> Image.Image:
    return Image.fromarray(render(scene))


@pytest.fixture(scope="module")
def zorb() -> Expectation:
    """The target as the shipped toy probes file states it."""
    from tunelab.toy.evaluation import load_toy_probes

    concept = load_toy_probes().concept("zorb")
    assert concept.role == "target"
    return concept.expectation()


def test_the_target_passes_on_its_own_images_and_on_no_other(zorb):
    rng = np.random.default_rng(0)
    zorbs = [drawn(unknown_scene(rng, LOCATIONS[i % 4], outline=i % 2 == 1)) for i in range(8)]
    others = ([drawn(shape_scene(rng, LOCATIONS[i % 4], outline=i % 2 == 1)) for i in range(12)]
              + [drawn(car_scene(rng, LOCATIONS[i % 4], outline=False)) for i in range(4)]
              + [drawn(character_scene(name, "beach", outline=False)) for name in ("mira", "kiko")])
    judge = ToyJudge()
    assert judge.check(zorb) is None

    on_zorbs = judge.judge(zorbs, zorb)
    assert on_zorbs.passed.all() and np.allclose(on_zorbs.score, 1.0)
    on_others = judge.judge(others, zorb)
    assert not on_others.passed.any()
    assert on_others.score.max() < 1.0

    # one read, several expectations: what the scoring does (every target is checked on every image)
    readings = judge.read(zorbs + others)
    mixed = judge.verdict(readings, zorb)
    assert mixed.passed.tolist() == [True] * len(zorbs) + [False] * len(others)
    assert mixed.passed.mean() == pytest.approx(len(zorbs) / (len(zorbs) + len(others)))


def test_half_matches_earn_partial_credit_not_a_pass(zorb):
    rng = np.random.default_rng(1)
    red_stars = [drawn(shape_scene(rng, "forest", False, colours=("red",), shapes=("star",))) for _ in range(3)]
    purple_circles = [drawn(shape_scene(rng, "beach", True, colours=("purple",), shapes=("circle",))) for _ in range(3)]
    judged = ToyJudge().judge(red_stars + purple_circles, zorb)
    assert not judged.passed.any()
    # two of the three expected families (object, colour, shape) read right
    assert np.allclose(judged.score, 2 / 3)


def test_an_expectation_the_toy_judge_cannot_read_is_named_before_sampling():
    judge = ToyJudge()
    assert "toy" in judge.check(Expectation(tags=("purple", "star")))
    assert "colr" in judge.check(Expectation(toy={"colr": "purple"}))
