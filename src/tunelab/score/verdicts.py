"""Verdicts: what a finetune did to each concept, read from 95 % intervals (score/intervals.py) against the
thresholds in the probes file's [thresholds] table — never from a bare difference.

By role, from the change against the base (percentage points as fractions):

- target: "learned" when the whole interval lies at or above `learned_min_gain` *and* every contamination interval
  (the target's expectation checked on other prompts' images) lies below `contamination_max`; "improved" when it
  lies at or above `improved_min_gain` (or clears the learned bar but contaminates); "forgotten" when it lies below
  `-kept_max_loss`; "not learned" when it lies below `learned_min_gain` without a clear improvement.
- retain and uncond: "improved" above `improved_min_gain`, "kept" above `-kept_max_loss`, "forgotten" below it.
- otherwise "inconclusive", with how many images (at the current seeds) or training seeds (at the current images)
  would likely settle it: the interval's variance components projected until the threshold it straddles lies
  outside with 80 % power if the effect is as measured, and which of the two is the bottleneck.

A role's aggregate verdict is the same rule applied to the role's pooled estimate (`intervals.stack_groups`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal, Sequence

from pydantic import Field, model_validator

from tunelab.config import StrictModel
from tunelab.score.intervals import LEVEL, Estimate, t_quantile

Role = Literal["target", "retain", "uncond"]
VerdictName = Literal["learned", "improved", "kept", "forgotten", "not learned", "inconclusive"]
POWER = 0.8  # a projected count settles the verdict 4 times in 5 if the effect is as measured ...
UPPER = 0.75  # ... and the variance no smaller than its 75 % upper bound (3 seeds measure a spread poorly)
MAX_IMAGES_FACTOR = 64
MAX_SEEDS = 64


class VerdictThresholds(StrictModel):
    """[thresholds] in the probes file, as fractions (0.20 = 20 points)."""

    learned_min_gain: float = Field(0.20, gt=0, le=1)
    improved_min_gain: float = Field(0.05, ge=0, le=1)
    kept_max_loss: float = Field(0.10, ge=0, le=1)
    contamination_max: float = Field(0.10, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> "VerdictThresholds":
        if self.improved_min_gain > self.learned_min_gain:
            raise ValueError("improved_min_gain must not exceed learned_min_gain")
        return self


@dataclass(frozen=True)
class Settle:
    """What would likely settle an inconclusive verdict: `images` for this estimate (all its prompts together) at the
    current seed count, or `seeds` at the current images; None where that alone would not (within 64x images or 64
    seeds), or, for seeds, where one checkpoint without a prior seed SD says nothing about seed spread. When neither
    alone would, `both` is the fewest (images, seeds) grown by the same factor."""

    estimate: str  # "change" or "contamination (<where>)"
    kind: Literal["rate", "change"]
    threshold: float
    images: int | None
    seeds: int | None
    both: tuple[int, int] | None
    now_images: int
    now_seeds: int
    bottleneck: Literal["images", "seeds"]

    def format(self) -> str:
        options = [f"~{self.images} images (now {self.now_images})" if self.images else "",
                   f"~{self.seeds} seeds (now {self.now_seeds})" if self.seeds else "",
                   f"~{self.both[0]} images and ~{self.both[1]} seeds" if self.both else ""]
        found = " or ".join(o for o in options if o) or "more than 64x images or 64 seeds"
        bar = _pct(self.threshold) if self.kind == "rate" else _pts(self.threshold)
        return f"{self.estimate} vs {bar}: needs {found}; bottleneck: {self.bottleneck}"


@dataclass(frozen=True)
class Verdict:
    role: Role
    verdict: VerdictName
    reason: str
    settle: Settle | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        return f"{self.verdict}: {self.reason}" + (f" ({self.settle.format()})" if self.settle else "")


def verdict(role: Role, change: Estimate, contamination: Sequence[tuple[str, Estimate]] = (),
            thresholds: VerdictThresholds | None = None) -> Verdict:
    """The verdict for one concept (or a role's pool) from its change against the base and, for a target, its
    contamination estimates as (where, estimate): a change against the base where there is one, else a rate."""
    th = thresholds or VerdictThresholds()
    lo, hi, v = change.low, change.high, change.value
    shown = f"change {change.format()}"
    if role != "target":
        if lo >= th.improved_min_gain:
            return Verdict(role, "improved", f"{shown} lies above {_pts(th.improved_min_gain)}")
        if lo >= -th.kept_max_loss:
            return Verdict(role, "kept", f"{shown} lies above {_pts(-th.kept_max_loss)}")
        if hi < -th.kept_max_loss:
            return Verdict(role, "forgotten", f"{shown} lies below {_pts(-th.kept_max_loss)}")
        return Verdict(role, "inconclusive", f"{shown} straddles {_pts(-th.kept_max_loss)}",
                       _settle(change, "change", -th.kept_max_loss, abs(v + th.kept_max_loss)))
    if lo >= th.learned_min_gain:
        return _contamination_verdict(shown, contamination, th)
    if lo >= th.improved_min_gain:
        return Verdict(role, "improved", f"{shown} lies above {_pts(th.improved_min_gain)}")
    if hi < -th.kept_max_loss:
        return Verdict(role, "forgotten", f"{shown} lies below {_pts(-th.kept_max_loss)}")
    if hi < th.learned_min_gain:
        return Verdict(role, "not learned", f"{shown} lies below {_pts(th.learned_min_gain)}")
    # lo < improved <= learned <= hi: settled once the interval clears either bar
    to_improved, to_not_learned = v - th.improved_min_gain, th.learned_min_gain - v
    threshold = th.improved_min_gain if to_improved >= to_not_learned else th.learned_min_gain
    return Verdict(role, "inconclusive", f"{shown} spans {_pts(th.improved_min_gain)} to {_pts(th.learned_min_gain)}",
                   _settle(change, "change", threshold, max(to_improved, to_not_learned)))


def concept_verdict(role: Role, entry: dict, thresholds: VerdictThresholds | None = None) -> Verdict:
    """`verdict` from a scoreboard entry: {"change": Estimate dict, "contamination": {where: rate dict,
    f"{where}_change": change dict}} (the change against the base is used where present)."""
    found = entry.get("contamination", {})
    places = [w for w in found if not w.endswith("_change")]
    contamination = [(w, Estimate.from_dict(found.get(f"{w}_change", found[w]))) for w in places]
    return verdict(role, Estimate.from_dict(entry["change"]), contamination, thresholds)


def _contamination_verdict(shown: str, contamination: Sequence[tuple[str, Estimate]],
                           th: VerdictThresholds) -> Verdict:
    limit = th.contamination_max
    gained = f"{shown} lies above {_pts(th.learned_min_gain)}"
    over = [(w, e) for w, e in contamination if e.low >= limit]
    if over:
        listed = ", ".join(f"{w} {e.format()}" for w, e in over)
        return Verdict("target", "improved", f"{gained}, but contamination {listed} lies above {_pct(limit)}")
    open_ = [(w, e) for w, e in contamination if e.high >= limit]
    if not open_:
        clean = "; contamination " + ", ".join(f"{w} {e.format()}" for w, e in contamination) if contamination else ""
        return Verdict("target", "learned", f"{gained}{clean}" + (f" below {_pct(limit)}" if clean else ""))
    where, worst = min(open_, key=lambda we: abs(we[1].value - limit))  # the hardest one to settle
    reason = f"{gained}; contamination {where} {worst.format()} straddles {_pct(limit)}"
    return Verdict("target", "inconclusive", reason,
                   _settle(worst, f"contamination ({where})", limit, abs(worst.value - limit)))


def _settle(est: Estimate, label: str, threshold: float, distance: float) -> Settle:
    """Fewest images (at the current seeds) and fewest seeds (at the current images) for which the interval would
    clear `threshold`, `distance` away from the estimate, with POWER if the effect is as measured."""
    z = NormalDist().inv_cdf(POWER)

    def settles(n_seeds: int, factor: float) -> bool:
        se, df = est.projected(n_seeds, factor, upper=UPPER)
        return distance > 0 and (t_quantile(0.5 + LEVEL / 2, df) + z) * se <= distance

    images = _fewest(lambda n: settles(est.n_seeds, n / est.n_images), est.n_images + 1,
                     est.n_images * MAX_IMAGES_FACTOR)
    seeds = both = None
    if est.covers == "setting":
        seeds = _fewest(lambda r: settles(r, 1.0), max(est.n_seeds + 1, 2), MAX_SEEDS)
        if images is None and seeds is None:
            scale = _fewest(lambda k: settles(max(est.n_seeds, 1) * k, k), 2, MAX_SEEDS)
            both = (est.n_images * scale, max(est.n_seeds, 1) * scale) if scale else None
    seed_part = est.seed_var / est.n_seeds
    image_part = est.noise_var / est.n_seeds + est.image_var
    bottleneck = "seeds" if est.covers == "setting" and seed_part >= image_part else "images"
    return Settle(label, est.kind, threshold, images, seeds, both, est.n_images, est.n_seeds, bottleneck)


def _fewest(ok, lo: int, hi: int) -> int | None:
    """Smallest n in [lo, hi] with ok(n) (ok is monotone in n), or None."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def _pts(x: float) -> str:
    return f"{100 * x:+.0f} points"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"
