"""95 % intervals for judged pass rates and their changes against the base. Method and why: docs/MEASUREMENT.md.

`x[r, i]` in [0, 1] is the judge's value for training seed r and image i; image i (prompt, sampling seed) is the same
slot for every model, so `base[i]` pairs with `x[:, i]`. The variance of the mean is the sum of a seed part (spread of
the per-seed means, R - 1 df) and an image part (spread within each prompt group, less the image-by-seed noise the
seed part holds), with Student-t at Welch–Satterthwaite df. Shapes, each chosen by simulated coverage
(tests/score/test_intervals.py): Wilson for one checkpoint's rate, logit-symmetric for a rate over seeds, symmetric
with pseudo-images for a change. Nothing is random: the same inputs give the same interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Literal, Mapping, NamedTuple, Sequence

import numpy as np

from tunelab.errors import TunelabError

LEVEL = 0.95
# pseudo-images as (count, mean, population variance of their values)
_AGRESTI_COULL = (4, 0.5, 0.25)  # a rate: 1, 1, 0, 0
_AGRESTI_MIN = (1, 0.0, 0.5)  # a paired change: a quarter image in each base/finetune cell, d = 1, -1, 0, 0
_AGRESTI_CAFFO = (2, 0.5, 0.25)  # each side of an unpaired change: 1, 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95 % interval. `covers`: "setting" (mean over the population of training seeds: R >= 2
    or a prior seed SD) or "checkpoint" (this one model, image noise only). The `*_var` fields are the variance
    components, kept so verdicts can project to more images or seeds: `seed_var` is one seed's spread beyond image
    noise, `noise_var` the image-by-seed noise in one seed's mean, `image_var` the image noise shared by all seeds."""

    value: float
    low: float
    high: float
    kind: Literal["rate", "change"]
    covers: Literal["setting", "checkpoint"]
    method: Literal["rate", "paired", "unpaired"]
    n_images: int
    n_seeds: int
    n_groups: int
    df: float
    seed_var: float
    noise_var: float
    image_var: float
    per_seed: tuple[float, ...]

    def to_dict(self) -> dict:
        """Plain JSON (an infinite df, i.e. every part known, is written as null)."""
        return {**asdict(self), "df": self.df if math.isfinite(self.df) else None}

    def format(self) -> str:
        return format_estimate(self.to_dict())

    def projected(self, n_seeds: int | None = None, images_factor: float = 1.0,
                  upper: float | None = None) -> tuple[float, float]:
        """(standard error, df) this estimate would have with `n_seeds` training seeds and `images_factor` times as
        many images, if the variance components stay as measured — or, with `upper` (e.g. 0.75), at that one-sided
        upper confidence bound of each (a seed spread measured from 3 seeds is itself very uncertain)."""
        seeds = n_seeds or self.n_seeds
        seed_df, image_df = self.n_seeds - 1, self.n_images / self.n_groups - 1
        grow = (lambda df: df / _chi2_quantile(1 - upper, df) if df > 0 else 1.0) if upper else (lambda df: 1.0)
        seed_var = self.seed_var * (grow(seed_df) if self.n_seeds > 1 else 1.0)
        seed_part = (seed_var + self.noise_var / images_factor) / seeds, (seeds - 1 if seeds > 1 else math.inf)
        image_part = self.image_var * grow(image_df) / images_factor, images_factor * (image_df + 1) - 1
        var, df = _satterthwaite([seed_part, image_part])
        return math.sqrt(var), df

    @classmethod
    def from_dict(cls, data: dict) -> "Estimate":
        df = math.inf if data["df"] is None else data["df"]
        return cls(**{**data, "per_seed": tuple(data["per_seed"]), "df": df})


def format_estimate(estimate: Mapping | None) -> str:
    """An estimate (or its scoreboard.json dict): '42% [31, 54]' for a rate, '+12 [+3, +21]' (percentage points) for
    a change, '–' when not measured."""
    if not estimate:
        return "–"
    v, lo, hi = (100 * estimate[k] for k in ("value", "low", "high"))
    if estimate["kind"] == "rate":
        return f"{v:.0f}% [{lo:.0f}, {hi:.0f}]"
    return f"{v:+.0f} [{lo:+.0f}, {hi:+.0f}]"


def rate(x, *, groups=None, prior_seed_sd: float | None = None) -> Estimate:
    """Pass rate of a setting (`x` [R, N], or [N] for one model). `groups` labels each image's prompt or concept:
    each group weighs the same. With R = 1, `prior_seed_sd` (seed-to-seed SD of the rate) makes the interval cover
    the setting instead of the checkpoint; with R >= 2 the seeds' own spread is used and the prior is ignored."""
    y = _as_matrix(x, "x")
    comp = _components(y, _groups(groups, y.shape[1]), prior_seed_sd)
    if comp.n_seeds == 1 and prior_seed_sd is None:
        return _estimate(comp, "rate", "rate", _wilson, None)
    return _estimate(comp, "rate", "rate", _logit if comp.n_seeds > 1 else _linear, _AGRESTI_COULL)


def change(x, base, *, groups=None, prior_seed_sd: float | None = None, unpaired: bool = False) -> Estimate:
    """Setting's rate minus the base's, image for image (`base` [N] holds the same image slots as `x[:, i]`).
    `unpaired=True` ignores the pairing (two independent rates), for comparison only."""
    y, b = _as_matrix(x, "x"), _as_matrix(base, "base")
    if b.shape != (1, y.shape[1]):
        raise TunelabError(f"intervals: base has shape {np.shape(base)}, expected [{y.shape[1]}] like x's images")
    g = _groups(groups, y.shape[1])
    if not unpaired:
        return _estimate(_components(y - b, g, prior_seed_sd), "change", "paired", _linear, _AGRESTI_MIN)
    cx, cb = _components(y, g, prior_seed_sd), _components(b, g, None)
    centre_x, parts_x = _adjusted(cx, _AGRESTI_CAFFO)
    centre_b, parts_b = _adjusted(cb, _AGRESTI_CAFFO)
    both = cx._replace(value=cx.value - cb.value, image_var=cx.image_var + cb.image_var,
                       per_seed=tuple(v - cb.value for v in cx.per_seed))
    return _estimate(both, "change", "unpaired", _linear, None, (centre_x - centre_b, parts_x + parts_b))


def difference(x, y, *, groups=None, same_models: bool = False) -> Estimate:
    """x − y for two sets of judged values on the same image slots. `same_models`: both come from the same
    checkpoints (e.g. one concept prompted with and without quality tags): paired by seed and image, like `change`.
    Otherwise two settings with their own training seeds, paired by image: both settings' seed spread plus the image
    spread of the difference of their seed means (which counts the image-by-seed noise twice: conservative)."""
    a, b = _as_matrix(x, "x"), _as_matrix(y, "y")
    if a.shape[1] != b.shape[1] or (same_models and a.shape != b.shape):
        raise TunelabError(f"intervals: x {a.shape} and y {b.shape} must hold the same image slots"
                           + (" from the same seeds" if same_models else ""))
    g = _groups(groups, a.shape[1])
    if same_models:
        return _estimate(_components(a - b, g, None), "change", "paired", _linear, _AGRESTI_MIN)
    ca, cb = _components(a, g, None), _components(b, g, None)
    diff = _components((a.mean(axis=0) - b.mean(axis=0))[None, :], g, None)
    both = diff._replace(n_seeds=min(ca.n_seeds, cb.n_seeds), seed_var=ca.seed_var + cb.seed_var,
                         noise_var=ca.noise_var + cb.noise_var, seed_parts=ca.seed_parts + cb.seed_parts,
                         covers="setting" if ca.covers == cb.covers == "setting" else "checkpoint", per_seed=())
    return _estimate(both, "change", "paired", _linear, _AGRESTI_MIN)


def stack_groups(parts: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-concept (or per-prompt) arrays [R, N_k] along images, with a group label per image: the
    role-level aggregate is then `rate(x, groups=g)`, the mean over concepts with each concept weighted equally."""
    mats = [_as_matrix(p, "part") for p in parts]
    return np.concatenate(mats, axis=1), np.concatenate([np.full(m.shape[1], k) for k, m in enumerate(mats)])


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile for real df >= 1 (no scipy: Newton on the exact CDF via the incomplete beta function).
    df is rounded to 4 significant digits so repeated calls hit the cache; that moves t by less than 0.1 %."""
    if not math.isfinite(df) or df > 1e7:
        return NormalDist().inv_cdf(p)
    return _t_quantile(round(p, 12), float(f"{df:.4g}"))


# --- internals ---------------------------------------------------------------------------------------------------


class _Components(NamedTuple):
    value: float
    n_seeds: int
    n_images: int
    n_groups: int
    covers: str
    seed_var: float
    noise_var: float
    image_var: float
    seed_parts: list  # (variance of the mean, df), not shrunk by pseudo-images
    image_parts: list
    per_seed: tuple


def _components(y: np.ndarray, g: np.ndarray, prior_seed_sd: float | None) -> _Components:
    """Variance components of the group-weighted grand mean of y [R, N] (each group weighs the same)."""
    n_seeds, n_images = y.shape
    counts = np.bincount(g)
    n_groups = len(counts)
    w2 = 1.0 / (n_groups**2 * counts)  # sum of squared per-image weights in each group (weights sum to 1)
    image_means = y.mean(axis=0)
    group_means = np.bincount(g, image_means) / counts
    spread = np.bincount(g, (image_means - group_means[g]) ** 2) / (counts - 1)
    cells = (g + n_groups * np.arange(n_seeds)[:, None]).ravel()  # (seed, group) of every value
    seed_group_means = np.bincount(cells, y.ravel(), n_seeds * n_groups).reshape(n_seeds, n_groups) / counts
    per_seed = seed_group_means.mean(axis=1)
    noise_var = 0.0
    if n_seeds > 1:  # the image-by-seed noise is already in the seed term: take it out of the image term
        resid = y - image_means - seed_group_means[:, g] + group_means[g]
        ms_resid = np.bincount(g, (resid**2).sum(axis=0)) / ((n_seeds - 1) * (counts - 1))
        spread, noise_var = np.maximum(spread - ms_resid / n_seeds, 0.0), float(w2 @ ms_resid)
    image_parts = [(float(v), int(n - 1)) for v, n in zip(w2 * spread, counts)]
    image_var = float(w2 @ spread)
    seed_var, seed_parts = 0.0, []
    if n_seeds > 1:
        between = float(np.var(per_seed, ddof=1))
        seed_parts.append((between / n_seeds, n_seeds - 1))
        noise_var = min(noise_var, between)
        seed_var = between - noise_var
    elif prior_seed_sd is not None:
        if not prior_seed_sd >= 0:
            raise TunelabError(f"intervals: prior_seed_sd must be >= 0, got {prior_seed_sd}")
        seed_var = float(prior_seed_sd) ** 2
        seed_parts.append((seed_var, math.inf))  # known from elsewhere: no df of its own
    covers = "setting" if n_seeds > 1 or prior_seed_sd is not None else "checkpoint"
    return _Components(float(per_seed.mean()), n_seeds, n_images, n_groups, covers, seed_var, noise_var, image_var,
                       seed_parts, image_parts, tuple(float(v) for v in per_seed))


def _adjusted(c: _Components, pseudo: tuple[int, float, float] | None) -> tuple[float, list]:
    """Centre and variance parts after adding pseudo-images (Agresti–Coull as a mixture: the judged values weigh
    1 - lam, the pseudo-images lam; image terms shrink with the centre, and the pseudo-images add their own spread
    and their distance from the data, which keeps 0 % and 100 % from giving zero width)."""
    if pseudo is None:
        return c.value, c.seed_parts + c.image_parts
    count, mean, spread = pseudo
    n_judged = c.n_seeds * c.n_images
    lam = count / (n_judged + count)
    pseudo_var = lam * (1 - lam) / n_judged * (spread + (1 - lam) * (c.value - mean) ** 2)
    # seed terms are not shrunk: pseudo-images say nothing about how training seeds differ
    parts = c.seed_parts + [((1 - lam) ** 2 * v, d) for v, d in c.image_parts] + [(pseudo_var, math.inf)]
    return (1 - lam) * c.value + lam * mean, parts


def _estimate(c: _Components, kind, method, shape, pseudo, adjusted=None) -> Estimate:
    centre, parts = adjusted or _adjusted(c, pseudo)
    var, df = _satterthwaite(parts)
    low, high = shape(c.value, centre, var, t_quantile(0.5 + LEVEL / 2, df), c.n_seeds * c.n_images)
    # clipped to the possible range, and never excluding the observed value (a logit interval around the
    # pseudo-image centre would, at 0 % or 100 %)
    low, high = max(min(low, c.value), 0.0 if kind == "rate" else -1.0), min(max(high, c.value), 1.0)
    return Estimate(c.value, low, high, kind, c.covers, method, c.n_images, c.n_seeds, c.n_groups, df, c.seed_var,
                    c.noise_var, c.image_var, c.per_seed)


def _linear(value, centre, var, t, n_judged) -> tuple[float, float]:
    half = t * math.sqrt(var)
    return centre - half, centre + half


def _logit(value, centre, var, t, n_judged) -> tuple[float, float]:
    """Symmetric on the logit scale (delta method): per-seed rates near 0 or 1 are skewed, and a symmetric interval
    on the rate scale under-covers on the long side."""
    c = min(max(centre, 1e-9), 1 - 1e-9)
    half, mid = t * math.sqrt(var) / (c * (1 - c)), math.log(c / (1 - c))
    return 1 / (1 + math.exp(half - mid)), 1 / (1 + math.exp(-mid - half))


def _wilson(value, centre, var, t, n_judged) -> tuple[float, float]:
    """Wilson's score interval at the effective sample size p(1-p)/var (groups can make n images worth more or fewer
    independent ones), with t for z as Korn & Graubard do. Never zero width, asymmetric near 0 and 1."""
    p = value
    n = p * (1 - p) / var if var > 0 and 0 < p < 1 else n_judged
    k = t * t / n
    mid = (p + k / 2) / (1 + k)
    half = t / (1 + k) * math.sqrt(p * (1 - p) / n + t * t / (4 * n * n))
    return (max(mid - half, 0.0) if p > 0 else 0.0), (min(mid + half, 1.0) if p < 1 else 1.0)


def _as_matrix(x, name: str) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64)
    y = y[None, :] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[1] < 2 or y.shape[0] < 1:
        raise TunelabError(f"intervals: {name} must be [seeds, images] with >= 2 images, got shape {np.shape(x)}")
    if not np.all(np.isfinite(y)) or y.min() < 0 or y.max() > 1:
        raise TunelabError(f"intervals: {name} must hold judged values in [0, 1]")
    return y


def _groups(groups, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    labels = np.asarray(groups)
    if labels.shape != (n,):
        raise TunelabError(f"intervals: groups has shape {labels.shape}, expected [{n}] (one label per image)")
    if labels.dtype.kind in "iu" and labels.size and labels.min() >= 0 and np.bincount(labels).min() > 0:
        codes, counts = labels.astype(np.int64), np.bincount(labels)  # already 0..G-1: skip the sort
    else:
        _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise TunelabError("intervals: every group needs >= 2 images to measure image noise")
    return codes.reshape(n)


def _satterthwaite(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """Total variance and its Welch–Satterthwaite df (an infinite df marks a known component).

    Plain Welch–Satterthwaite under-covers with 2-4 seeds: when the seed part happens to come out small, the interval
    is narrow *and* the df jump up (88-93 % in a normal-theory simulation). So the df are computed as if each part
    were at its 75 % upper bound (v * df / chi2_df(0.25)); the variance itself is unchanged. In the same simulation
    that covers 94-96 % at 3-5 seeds and 94-97 % at 2, whatever the seed/image share."""
    var = float(sum(v for v, _ in parts))
    upper = [(v * d / _chi2_quantile(0.25, d), d) for v, d in parts if v > 0 and math.isfinite(d)]
    denom = sum(u * u / d for u, d in upper)
    total = sum(u for u, _ in upper) + sum(v for v, d in parts if v > 0 and not math.isfinite(d))
    return var, (float(total * total / denom) if denom > 0 else math.inf)


@lru_cache(maxsize=4096)
def _chi2_quantile(q: float, df: float) -> float:
    """Chi-square quantile by the Wilson–Hilferty cube approximation (within ~4 % at df = 1, better above)."""
    z = NormalDist().inv_cdf(q)
    return df * max(1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df)), 1e-3) ** 3


@lru_cache(maxsize=4096)
def _t_quantile(p: float, df: float) -> float:
    if p < 0.5:
        return -_t_quantile(1 - p, df)
    target = 1 - p  # upper tail P(T > t)
    z = max(NormalDist().inv_cdf(p), 1e-3)
    # Cornish–Fisher start (Abramowitz & Stegun 26.7.5): within 1e-4 from df = 3, so Newton needs a step or two
    t = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3) + (
        79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    lo, hi = 0.0, math.inf
    for _ in range(100):  # Newton, bisecting when a step leaves the bracket (the tail is monotone)
        tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
        if abs(tail - target) < 1e-9 * target:
            break
        lo, hi = (t, hi) if tail > target else (lo, t)
        log_pdf = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                   - (df + 1) / 2 * math.log1p(t * t / df))
        step = t + (tail - target) / math.exp(log_pdf)
        t = step if lo < step < hi else (lo + hi) / 2 if math.isfinite(hi) else 2 * t
    return t


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes' betacf)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-13:
            break
    return math.exp(log_front) * h / a
