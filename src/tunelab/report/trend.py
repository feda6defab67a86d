"""The loss trend of a run, read honestly: the training loss smoothed two ways (EMA, a trailing windowed median) and a
straight-line fit of loss against ln(step) over a window of the latest steps, with its slope's 95 % interval and the
R² of that same fit (same x, same y: a practitioner's notebook once reported an R² taken on another x than the fit,
which made it meaningless). The same fit for each validation set's mean and per timestep band.

The fit runs on the raw per-step values, never on a smoothed curve: smoothing makes neighbouring points dependent,
and an interval computed as if they were not would be far too narrow. A trend counts as "improving" only when the
whole interval is below zero and the fitted drop is at least `min_drop` of the loss per doubling of steps; otherwise
it says "no longer improving" (or "rising"), in words and with the numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tunelab.report.training_curves import RunCurves, Series
from tunelab.score.intervals import LEVEL, t_quantile

LN2 = math.log(2.0)
MIN_POINTS = 3  # a line through 2 points has no residual left to measure its uncertainty
MIN_DROP = 0.01  # less than a 1 % drop per doubling of the steps counts as flat


def ema(values, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average, the trainer's own (`logging.loss_smoothing`): s = w·s + (1 − w)·x, from x₀."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    smoothed = None
    for i, value in enumerate(values):
        smoothed = value if smoothed is None else weight * smoothed + (1 - weight) * value
        out[i] = smoothed
    return out


def windowed_median(values, window: int = 25) -> np.ndarray:
    """Median of the last `window` values at each point (fewer at the start): unlike the EMA, one outlier step
    (a NaN-skipped batch, a spike) does not move it."""
    values = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError("window must be at least 1")
    return np.array([np.median(values[max(0, i + 1 - window): i + 1]) for i in range(len(values))])


def same_decimals(*values: float) -> list[str]:
    """Signed numbers with one number of decimals: 3 significant digits of the largest (-0.110 [-0.211, -0.009])."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    decimals = min(9, max(0, 2 - math.floor(math.log10(largest)))) if largest > 0 else 3
    return [f"{v:+.{decimals}f}" for v in values]


@dataclass(frozen=True)
class LogStepFit:
    """loss ≈ intercept + slope · ln(step), fitted by least squares on the points of steps first_step..last_step."""

    tag: str
    first_step: int
    last_step: int
    points: int
    intercept: float
    slope: float  # loss per unit of ln(step)
    low: float  # the slope's 95 % interval (Student-t, points − 2 df)
    high: float
    r_squared: float  # of this fit, on its own x = ln(step) and y
    mean_loss: float

    def at(self, step: float) -> float:
        return self.intercept + self.slope * math.log(step)

    @property
    def per_doubling(self) -> tuple[float, float, float]:
        """The slope as the change in loss per doubling of the step count, with its interval."""
        return self.slope * LN2, self.low * LN2, self.high * LN2

    def relative_per_doubling(self) -> float:
        return self.slope * LN2 / self.mean_loss if self.mean_loss else 0.0

    @property
    def verdict(self) -> str:
        if self.high < 0 and -self.relative_per_doubling() >= MIN_DROP:
            return "improving"
        if self.low > 0:
            return "rising"
        return "no longer improving"

    def words(self) -> str:
        """One line: the verdict in words, then the numbers it was read from."""
        value, low, high = same_decimals(*self.per_doubling)
        numbers = (f"{value} per doubling of steps [{low}, {high}] ({100 * self.relative_per_doubling():+.1f} %), "
                   f"R² {self.r_squared:.2f} on ln(step), steps {self.first_step}–{self.last_step}, {self.points} points")
        if self.verdict == "improving":
            return f"still improving: {numbers}"
        if self.verdict == "rising":
            return f"rising (getting worse): {numbers}"
        why = "the interval includes zero" if self.high >= 0 else f"a drop under {MIN_DROP:.0%} per doubling"
        return f"no longer improving ({why}): {numbers}"


@dataclass(frozen=True)
class TooFewPoints:
    tag: str
    points: int
    first_step: int | None
    last_step: int | None
    verdict: str = "too few points"

    def words(self) -> str:
        where = f" in steps {self.first_step}–{self.last_step}" if self.points else ""
        return f"too few points to fit a trend ({self.points}{where}; {MIN_POINTS} needed)"


def window_points(series: Series, window: int | None) -> Series:
    """The points a fit uses: those of the latest `window` steps (step > last − window); by default the latest half
    of the steps logged (step > last / 2), i.e. one doubling of the step count. Steps < 1 have no logarithm."""
    points = [(step, value) for step, value in series if step >= 1 and math.isfinite(value)]
    if not points:
        return []
    last = points[-1][0]
    start = last - window if window is not None else last / 2
    return [(step, value) for step, value in points if step > start]


def fit_log_step(tag: str, series: Series, window: int | None = None) -> LogStepFit | TooFewPoints:
    points = window_points(series, window)
    steps = [step for step, _ in points]
    if len(points) < MIN_POINTS or len(set(steps)) < 2:
        return TooFewPoints(tag, len(points), steps[0] if steps else None, steps[-1] if steps else None)
    x = np.log(np.array(steps, dtype=np.float64))
    y = np.array([value for _, value in points], dtype=np.float64)
    n = len(x)
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(((x - x_mean) ** 2).sum())
    slope = float(((x - x_mean) * (y - y_mean)).sum() / sxx)
    intercept = float(y_mean - slope * x_mean)
    residuals = y - (intercept + slope * x)
    sse, sst = float((residuals ** 2).sum()), float(((y - y_mean) ** 2).sum())
    half = t_quantile(0.5 + LEVEL / 2, n - 2) * math.sqrt(sse / (n - 2) / sxx)
    r_squared = 1.0 - sse / sst if sst > 0 else 0.0
    return LogStepFit(tag, steps[0], steps[-1], n, intercept, slope, slope - half, slope + half, r_squared,
                      float(y_mean))


@dataclass(frozen=True)
class RunTrend:
    """A run's trends: training loss (with its EMA and windowed median at the last step) and each validation
    set's mean and bands."""

    run: str
    training: LogStepFit | TooFewPoints | None
    last_ema: float | None
    last_median: float | None
    validation: dict[str, list[LogStepFit | TooFewPoints]]  # set → [mean, band 0, band 1, ...]


def training_loss_series(curves: RunCurves) -> Series:
    """The per-step training loss: the raw values (the smoothed curve is derived from them)."""
    return curves.scalars.get("loss/raw") or []


def validation_tags(curves: RunCurves, set_name: str) -> list[str]:
    bands = sorted((tag for tag in curves.tags(f"val/{set_name}/band_")), key=lambda t: int(t.rsplit("_", 1)[1]))
    return [f"val/{set_name}/mean"] * (f"val/{set_name}/mean" in curves.scalars) + bands


def run_trend(curves: RunCurves, window: int | None = None, *, smoothing: float = 0.9,
              median_window: int = 25) -> RunTrend:
    raw = training_loss_series(curves)
    values = [value for _, value in raw]
    return RunTrend(
        run=curves.name,
        training=fit_log_step("loss/raw", raw, window) if raw else None,
        last_ema=float(ema(values, smoothing)[-1]) if values else None,
        last_median=float(windowed_median(values, median_window)[-1]) if values else None,
        validation={set_name: [fit_log_step(tag, curves.scalars[tag], window)
                               for tag in validation_tags(curves, set_name)]
                    for set_name in curves.validation_sets()},
    )
