"""The analytic judge against the generator's ground truth (≥ 500 images), also blurred like model samples."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tunelab.toy.judge import FAMILIES, judge, unmix
from tunelab.toy.world import generate


@pytest.fixture(scope="module")
def ground_truth():
    # The vae world has every colour, shape, character (eyes open and closed) and both styles.
    return generate("vae", 450, seed=11) + generate("base", 100, seed=12) + generate("finetune", 100, seed=13)


def accuracy(items, transform=lambda image: image) -> dict[str, float]:
    right, total = Counter(), Counter()
    for item in items:
        labels = judge(transform(item.image)).labels
        for family in FAMILIES:
            total[family] += 1
            right[family] += labels[family] == item.attributes[family]
    return {family: right[family] / total[family] for family in FAMILIES}


def test_judge_reads_ground_truth_for_every_family(ground_truth):
    assert len(ground_truth) >= 500
    result = accuracy(ground_truth)
    assert min(result.values()) >= 0.98, result


def test_judge_is_robust_to_blur_and_noise(ground_truth):
    """Model samples are softer than drawings: a Gaussian blur plus pixel noise must not change the reading."""
    rng = np.random.default_rng(0)

    def soften(image):
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
        return Image.fromarray(np.clip(blurred + rng.normal(0, 6, blurred.shape), 0, 255).astype(np.uint8))

    result = accuracy(ground_truth[:300], soften)
    assert min(result.values()) >= 0.95, result


def test_scores_and_labels_per_family():
    item = next(i for i in generate("vae", 50, seed=1) if i.scene.kind == "shape")
    judgement = judge(item.image)
    assert set(judgement.labels) == set(FAMILIES) and all(0.0 <= s <= 1.0 for s in judgement.scores.values())
    assert judgement.matches({"colour": item.scene.colour, "shape": item.scene.shape})
    assert not judgement.matches({"colour": "not a colour"})
    # An empty scene (background only) has no shape to read.
    empty = np.asarray(item.image).copy()
    empty[:] = empty[:, :1]
    assert judge(empty).labels["shape"] is None


def test_unmix_reads_faint_colours_and_refuses_none():
    skin = np.array([245, 195, 150], dtype=np.float32)
    blue = np.array([40, 80, 220], dtype=np.float32)
    assert unmix(skin + 0.6 * (blue - skin), skin)[0] == "blue"
    assert unmix(skin + 0.1 * (blue - skin), skin)[0] is None
