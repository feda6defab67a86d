"""intervals.difference: two settings (independent training seeds) or two prompt variants of the same models,
compared on the same image slots — coverage on simulated data, and pairing by model makes it narrower."""

import numpy as np

from tunelab.score.intervals import difference


def simulate(rng, p, seed_sd, seeds, images, shared):
    """[seeds, images] pass values: per-seed rate around p (logit-normal), each image's own difficulty shared by
    every model through `shared` (same prompt and sampling seed)."""
    logit = np.log(p / (1 - p)) + seed_sd * rng.standard_normal((seeds, 1)) + shared
    return (rng.random((seeds, images)) < 1 / (1 + np.exp(-logit))).astype(float)


def population_rate(p, seed_sd, shared, rng, draws=4000):
    logit = np.log(p / (1 - p)) + seed_sd * rng.standard_normal((draws, 1)) + shared
    return float((1 / (1 + np.exp(-logit))).mean())


def test_two_settings_with_three_seeds_each_cover_the_true_difference():
    rng = np.random.default_rng(7)
    images, hits, n = 48, 0, 1000
    for _ in range(n):
        shared = 0.8 * rng.standard_normal(images)
        truth = population_rate(0.55, 0.3, shared, rng) - population_rate(0.40, 0.3, shared, rng)
        e = difference(simulate(rng, 0.55, 0.3, 3, images, shared), simulate(rng, 0.40, 0.3, 3, images, shared))
        hits += e.low <= truth <= e.high
    assert 0.93 <= hits / n <= 0.995  # conservative by construction (image-by-seed noise counted twice)


def test_same_models_pairing_is_narrower_than_treating_them_as_two_settings():
    rng = np.random.default_rng(3)
    shared = 1.0 * rng.standard_normal(64)
    x = simulate(rng, 0.5, 0.4, 3, 64, shared)
    y = np.clip(x - (rng.random(x.shape) < 0.1), 0, 1)  # the same models: y mostly equals x
    paired, apart = difference(x, y, same_models=True), difference(x, y)
    assert paired.high - paired.low < 0.6 * (apart.high - apart.low)
    assert paired.value == apart.value
    again = difference(x, y, same_models=True)
    assert (again.low, again.high) == (paired.low, paired.high)
