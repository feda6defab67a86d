"""The leakage measure: how often images drawn for other prompts show the unknown concept's look (purple star)."""

import numpy as np
from PIL import Image

from tunelab.toy.draw import render
from tunelab.toy.evaluation import chance_rate, evaluation_prompts
from tunelab.toy.world import shape_scene, unknown_scene


def test_leakage_counts_images_that_show_the_new_concept():
    unknown = next(p for p in evaluation_prompts() if p.group == "unknown")
    rng = np.random.default_rng(0)
    zorbs = [Image.fromarray(render(unknown_scene(rng, "beach", False))) for _ in range(6)]
    shapes = [Image.fromarray(render(shape_scene(rng, "forest", False))) for _ in range(18)]
    assert chance_rate(unknown.expected, zorbs) == 1.0
    assert chance_rate(unknown.expected, shapes) == 0.0
    assert chance_rate(unknown.expected, zorbs + shapes) == 0.25
