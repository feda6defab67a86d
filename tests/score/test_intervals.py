"""Intervals for judged pass rates (score/intervals.py): coverage on simulated judging with a known truth, paired vs
unpaired width, determinism, and the edges (0 %, 100 %, groups, bad input).

The simulated world: training seed r has a probit offset a_r = mu + s * u_r, so its rate over the image population
is p_r = Phi(a_r) and the setting's rate is E[p_r] = Phi(mu / sqrt(1 + s^2)) = p exactly. Image i has a latent z_i
shared by every model, the base included (same prompt, same sampling seed), so x[r, i] = [a_r + d_g + rho z_i +
sqrt(1 - rho^2) e_ri > 0] and the base's b[i] likewise: base and finetune are correlated image for image. d_g is a
prompt's own difficulty (the truth is then the mean over prompts)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pytest

from tunelab.errors import TunelabError
from tunelab.score.intervals import change, rate, stack_groups, t_quantile

ND = NormalDist()
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
_phi = np.vectorize(ND.cdf)


@dataclass
class World:
    p: float  # the setting's true rate (mean over training seeds and images)
    seed_sd: float  # probit-scale spread of training seeds
    prompts: int
    per_prompt: int
    p_base: float
    prompt_spread: float = 0.0  # prompts' own difficulty, probit, from -spread to +spread
    rho: float = 0.6  # how much of an image's outcome its (prompt, sampling seed) decides, for every model

    def __post_init__(self):
        self.mu = ND.inv_cdf(self.p) * math.sqrt(1 + self.seed_sd**2)
        self.delta = np.linspace(-self.prompt_spread, self.prompt_spread, self.prompts)
        self.a_base = ND.inv_cdf(self.p_base)
        per_seed = _phi(self.mu + self.seed_sd * _NODES[:, None] + self.delta).mean(axis=1)  # quadrature over u
        self.truth = float(_WEIGHTS @ per_seed)
        self.rate_sd = float(np.sqrt(_WEIGHTS @ (per_seed - self.truth) ** 2))  # seed-to-seed SD of the rate
        self.base_truth = float(_phi(self.a_base + self.delta).mean())
        self.groups = np.repeat(np.arange(self.prompts), self.per_prompt)

    def draw(self, seeds: int, rng: np.random.Generator, images_factor: int = 1):
        """(x [seeds, N], base [N], the drawn checkpoints' own mean rate, groups)."""
        groups = np.repeat(np.arange(self.prompts), self.per_prompt * images_factor)
        a = self.mu + self.seed_sd * rng.standard_normal(seeds)
        shared = self.delta[groups] + self.rho * rng.standard_normal(len(groups))
        own = math.sqrt(1 - self.rho**2)
        x = (a[:, None] + shared + own * rng.standard_normal((seeds, len(groups))) > 0).astype(float)
        b = (self.a_base + shared + own * rng.standard_normal(len(groups)) > 0).astype(float)
        checkpoints = float(_phi(a[:, None] + self.delta).mean())
        return x, b, checkpoints, groups


WORLDS = {
    "p=0.50, rate SD 0.11, 64 images": World(0.50, 0.3, 4, 16, p_base=0.40),
    "p=0.05, rate SD 0.03, 128 images": World(0.05, 0.3, 8, 16, p_base=0.03),
    "p=0.20, rate SD 0.13, 48 images": World(0.20, 0.5, 3, 16, p_base=0.50),
    "p=0.85, rate SD 0.06, 32 images, unequal prompts": World(0.85, 0.2, 2, 16, p_base=0.90, prompt_spread=0.8),
}
CASES = [(1, False), (1, True), (3, False), (5, False)]  # (training seeds, prior seed SD passed)
SIMULATIONS = 2000


@pytest.mark.parametrize("name", list(WORLDS))
def test_intervals_cover_the_truth_95_percent(name):
    world, rng = WORLDS[name], np.random.default_rng(12)
    for seeds, prior in CASES:
        hits_rate = hits_change = 0
        for _ in range(SIMULATIONS):
            x, b, checkpoints, groups = world.draw(seeds, rng)
            # one checkpoint and no prior: the interval is for that checkpoint, not the setting
            truth = checkpoints if seeds == 1 and not prior else world.truth
            sd = world.rate_sd if prior else None
            r, c = rate(x, groups=groups, prior_seed_sd=sd), change(x, b, groups=groups, prior_seed_sd=sd)
            assert r.covers == ("checkpoint" if seeds == 1 and not prior else "setting")
            hits_rate += r.low <= truth <= r.high
            hits_change += c.low <= truth - world.base_truth <= c.high
        cover_rate, cover_change = hits_rate / SIMULATIONS, hits_change / SIMULATIONS
        print(f"{name}; seeds={seeds} prior={prior}: rate {cover_rate:.3f}, paired change {cover_change:.3f}")
        assert 0.93 <= cover_rate <= 0.97, (name, seeds, prior, cover_rate)
        assert 0.93 <= cover_change <= 0.97, (name, seeds, prior, cover_change)


@pytest.mark.parametrize("seeds", [1, 3])
def test_paired_change_is_narrower_than_unpaired(seeds):
    # rate SD 0.04 between seeds: image noise still matters at 3 seeds (when seeds dominate, pairing gains little)
    world, rng = World(0.5, 0.1, 4, 16, p_base=0.4, rho=0.8), np.random.default_rng(3)
    widths = []
    for _ in range(200):
        x, b, _, groups = world.draw(seeds, rng)
        paired, unpaired = change(x, b, groups=groups), change(x, b, groups=groups, unpaired=True)
        assert paired.method == "paired" and unpaired.method == "unpaired"
        assert paired.value == pytest.approx(unpaired.value)
        widths.append((paired.high - paired.low, unpaired.high - unpaired.low))
    paired_w, unpaired_w = np.array(widths).T
    assert np.mean(paired_w < unpaired_w) >= 0.9
    assert paired_w.mean() < 0.85 * unpaired_w.mean()


def test_same_inputs_give_identical_intervals():
    world = World(0.3, 0.4, 3, 16, p_base=0.2)
    x, b, _, groups = world.draw(3, np.random.default_rng(5))
    for call in (lambda: rate(x, groups=groups), lambda: change(x, b, groups=groups),
                 lambda: change(x, b, unpaired=True), lambda: rate(x[:1], prior_seed_sd=0.1)):
        first, second = call(), call()
        assert first == second and first.to_dict() == second.to_dict()
    assert rate(x.copy(), groups=list(groups)) == rate(x, groups=groups)


def test_zero_and_full_rates_still_have_width():
    for seeds in (1, 3):
        zeros, ones = np.zeros((seeds, 40)), np.ones((seeds, 40))
        r0, r1 = rate(zeros), rate(ones)
        assert r0.value == 0 and r0.low == 0 and 0.02 < r0.high < 0.2
        assert r1.value == 1 and r1.high == 1 and 0.8 < r1.low < 0.98
        for x, b in ((zeros, zeros[0]), (ones, ones[0])):
            c = change(x, b)
            assert c.value == 0 and c.low < 0 < c.high and c.high - c.low < 0.2
        c = change(ones, zeros[0])
        assert c.value == 1 and c.high == 1 and 0.8 < c.low < 1


def test_what_the_interval_covers():
    rng = np.random.default_rng(7)
    x = (rng.random((3, 64)) < np.array([[0.2], [0.5], [0.35]])).astype(float)
    one = rate(x[0])
    assert one.covers == "checkpoint" and one.n_seeds == 1 and one.seed_var == 0
    with_prior = rate(x[0], prior_seed_sd=0.1)
    assert with_prior.covers == "setting" and with_prior.value == one.value
    assert with_prior.high - with_prior.low > one.high - one.low + 0.1
    three = rate(x)
    assert three.covers == "setting" and three.per_seed == pytest.approx(tuple(x.mean(axis=1)))
    assert rate(x, prior_seed_sd=0.5) == three  # measured seed spread wins over a prior
    # seeds that disagree widen the interval, seeds that agree do not
    same = np.repeat(x[1:2], 3, axis=0)
    assert rate(same).high - rate(same).low < three.high - three.low
    assert rate(same).seed_var == 0 and three.seed_var > 0.005


def test_groups_weigh_equally_and_only_within_group_spread_is_noise():
    small, large = np.ones((2, 4)), np.zeros((2, 60))
    x, groups = stack_groups([small, large])
    assert x.shape == (2, 64) and list(np.bincount(groups)) == [4, 60]
    pooled = rate(x, groups=groups)
    assert pooled.value == pytest.approx(0.5) and pooled.n_groups == 2
    # two prompts that differ on purpose (all pass vs none): no image noise within either
    two = np.concatenate([np.ones(32), np.zeros(32)])
    by_prompt, as_one = rate(two, groups=np.repeat(["a", "b"], 32)), rate(two)
    assert by_prompt.value == as_one.value == 0.5
    assert by_prompt.image_var == 0 < as_one.image_var
    assert by_prompt.high - by_prompt.low < as_one.high - as_one.low


def test_format_and_json():
    rng = np.random.default_rng(1)
    x, b = (rng.random((3, 50)) < 0.42).astype(float), (rng.random(50) < 0.3).astype(float)
    r, c = rate(x), change(x, b)
    assert r.format() == f"{100 * r.value:.0f}% [{100 * r.low:.0f}, {100 * r.high:.0f}]"
    assert c.format().startswith(f"{100 * c.value:+.0f} [")
    assert r.low <= r.value <= r.high and c.low <= c.value <= c.high
    data = json.loads(json.dumps(c.to_dict()))
    assert type(c).from_dict(data) == c
    known = rate(np.zeros(10))  # no spread anywhere: every part known, infinite df, written as null
    assert math.isinf(known.df) and known.to_dict()["df"] is None
    assert type(known).from_dict(json.loads(json.dumps(known.to_dict(), allow_nan=False))) == known


def test_bad_input_is_one_line_error():
    good = np.zeros((2, 10))
    for call, words in [(lambda: rate(np.full(10, 2.0)), "[0, 1]"),
                        (lambda: rate(np.array([0.0, np.nan, 1.0])), "[0, 1]"),
                        (lambda: rate(np.zeros(1)), ">= 2 images"),
                        (lambda: change(good, np.zeros(9)), "expected [10]"),
                        (lambda: rate(good, groups=[0] * 9 + [1]), ">= 2 images"),
                        (lambda: rate(good, groups=[0] * 9), "one label per image"),
                        (lambda: rate(good[0], prior_seed_sd=-0.1), "prior_seed_sd")]:
        with pytest.raises(TunelabError, match=r"intervals: .*") as err:
            call()
        assert words in str(err.value) and "\n" not in str(err.value)


def test_t_quantiles_match_tables():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 10: 2.2281, 30: 2.0423, 120: 1.9799}
    for df, expected in table.items():
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-4)
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7))
    assert t_quantile(0.975, math.inf) == pytest.approx(1.95996, abs=1e-5)
    assert t_quantile(0.975, 2.5) > t_quantile(0.975, 3) > t_quantile(0.975, 3.5)
