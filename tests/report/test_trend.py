"""The loss trend (report/trend.py): on synthetic losses with a known slope against ln(step), the fitted slope's 95 %
interval covers the truth about 95 % of the time, its R² is numpy's on the same x and y, the window selects the
latest steps, a flat trend reads "no longer improving" with its numbers, and the smoothers match the trainer's EMA
and a plain trailing median."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from tunelab.report.trend import (LogStepFit, TooFewPoints, ema, fit_log_step, run_trend, window_points,
                                  windowed_median)
from tunelab.report.training_curves import RunCurves


def synthetic(slope: float, *, steps: int = 400, noise: float = 0.02, seed: int = 0, intercept: float = 0.3):
    rng = np.random.default_rng(seed)
    x = np.arange(1, steps + 1)
    y = intercept + slope * np.log(x) + rng.normal(0, noise, steps)
    return [(int(s), float(v)) for s, v in zip(x, y)]


def test_slope_interval_covers_the_known_slope_and_r2_is_numpys_on_the_same_data():
    true_slope, covered, trials = -0.01, 0, 400
    for seed in range(trials):
        series = synthetic(true_slope, steps=60, seed=seed)
        fit = fit_log_step("loss/raw", series, window=None)
        assert isinstance(fit, LogStepFit) and fit.points == 30 and (fit.first_step, fit.last_step) == (31, 60)
        covered += fit.low <= true_slope <= fit.high
        if seed < 20:
            x = np.log([s for s, _ in series[30:]])
            y = np.array([v for _, v in series[30:]])
            slope, intercept = np.polyfit(x, y, 1)
            assert fit.slope == pytest.approx(slope, rel=1e-9) and fit.intercept == pytest.approx(intercept, rel=1e-9)
            assert fit.r_squared == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)
            predicted = np.polyval([slope, intercept], x)
            assert fit.r_squared == pytest.approx(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    # binomial 95 % band around 0.95 for 400 trials: 0.929 .. 0.971
    assert 0.925 <= covered / trials <= 0.975, covered / trials


def test_r2_is_of_the_log_step_fit_not_of_another_x():
    series = [(s, 1.0 / s) for s in range(1, 201)]  # curved in both step and ln(step)
    fit = fit_log_step("loss/raw", series, window=200)
    x_log, x_lin, y = np.log(np.arange(1, 201)), np.arange(1, 201), np.array([v for _, v in series])
    assert fit.r_squared == pytest.approx(np.corrcoef(x_log, y)[0, 1] ** 2, rel=1e-9)
    assert abs(fit.r_squared - np.corrcoef(x_lin, y)[0, 1] ** 2) > 0.1  # the other x would have told another story


def test_window_is_the_latest_steps_and_defaults_to_the_latest_half():
    series = [(s, 1.0) for s in range(0, 101, 5)]  # step 0 has no logarithm
    assert [s for s, _ in window_points(series, None)] == list(range(55, 101, 5))
    assert [s for s, _ in window_points(series, 20)] == [85, 90, 95, 100]
    assert [s for s, _ in window_points(series, 1000)] == list(range(5, 101, 5))
    assert window_points([(3, float("nan")), (4, 1.0)], None) == [(4, 1.0)]
    few = fit_log_step("val/x/mean", [(10, 0.2), (20, 0.19)], None)
    assert isinstance(few, TooFewPoints) and few.words() == "too few points to fit a trend (1 in steps 20–20; 3 needed)"


@pytest.mark.parametrize("slope, verdict, opening", [
    (-0.05, "improving", "still improving: "),
    (0.0, "no longer improving", "no longer improving (the interval includes zero): "),
    (0.05, "rising", "rising (getting worse): "),
])
def test_trend_words_say_the_verdict_with_its_numbers(slope, verdict, opening):
    fit = fit_log_step("loss/raw", synthetic(slope, steps=300, noise=0.01, seed=3), window=200)
    assert fit.verdict == verdict
    value, low, high = fit.per_doubling
    assert value == pytest.approx(fit.slope * math.log(2)) and low < value < high
    words = fit.words()
    assert words.startswith(opening)
    shown = re.search(r"([-+][0-9.]+) per doubling of steps \[([-+][0-9.]+), ([-+][0-9.]+)\]", words).groups()
    (decimals,) = {len(number.split(".")[1]) for number in shown}  # one precision for the value and both ends
    assert all(abs(float(n) - v) <= 0.5 * 10 ** -decimals + 1e-12 for n, v in zip(shown, (value, low, high)))
    assert 100 <= round(max(abs(float(n)) for n in shown) * 10 ** decimals) < 1000  # 3 digits on the largest
    assert f"R² {fit.r_squared:.2f} on ln(step), steps 101–300, 200 points" in words


def test_a_tiny_but_certain_drop_is_still_no_longer_improving():
    fit = fit_log_step("loss/raw", synthetic(-0.0005, steps=2000, noise=0.0002, seed=1), window=None)
    assert fit.high < 0 and -fit.relative_per_doubling() < 0.01
    assert fit.verdict == "no longer improving" and fit.words().startswith(
        "no longer improving (a drop under 1% per doubling): ")


def test_ema_is_the_trainers_smoothed_loss_and_the_median_ignores_a_spike(tmp_path):
    from tunelab.train.config import LoggingConfig
    from tunelab.train.logs import TrainLogger

    losses = [0.3, 0.25, 0.4, 0.2, 0.22, 0.18]
    logger = TrainLogger(tmp_path, LoggingConfig(histogram_every_n_steps=0, tensorboard=False), enabled=False)
    for step, loss in enumerate(losses, start=1):
        logger.step(step, loss=loss, grad_norm=1.0, lrs={}, images=1, timesteps=torch.tensor([1]))
    assert ema(losses, 0.9)[-1] == pytest.approx(logger.smoothed, rel=1e-12)
    spiky = [0.2] * 10 + [5.0] + [0.2] * 3
    assert windowed_median(spiky, 5).max() == 0.2 and ema(spiky)[-1] > 0.5
    assert list(windowed_median([3, 1, 2], 2)) == [3, 2, 1.5]


def test_run_trend_fits_training_loss_and_each_validation_band():
    curves = RunCurves("run", {
        "loss/raw": synthetic(-0.02, steps=120, seed=5),
        "val/held/mean": [(s, 0.2 - 0.01 * math.log(s)) for s in range(10, 121, 10)],
        "val/held/band_1": [(s, 0.05) for s in range(10, 121, 10)],
        "val/held/band_0": [(s, 0.3 + 0.001 * (s % 20)) for s in range(10, 121, 10)],
    })
    trend = run_trend(curves, window=None)
    assert trend.training.verdict == "improving" and trend.last_ema is not None and trend.last_median is not None
    mean, band0, band1 = trend.validation["held"]
    assert [f.tag for f in (mean, band0, band1)] == ["val/held/mean", "val/held/band_0", "val/held/band_1"]
    assert mean.verdict == "improving" and mean.r_squared == pytest.approx(1.0)
    assert band1.verdict == "no longer improving" and band1.r_squared == 0.0


def test_report_shows_each_runs_trend_over_the_window_the_user_sets(tmp_path):
    """`tunelab report --trend-window 40`: a row per curve (training loss, the validation set's mean and bands) with
    the fit of the TensorBoard values the trainer's logger wrote, over the latest 40 steps."""
    from html import unescape

    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.report.training_curves import read_run_curves
    from tunelab.train.config import LoggingConfig
    from tunelab.train.logs import TrainLogger

    logger = TrainLogger(tmp_path / "run-a" / "tensorboard", LoggingConfig(histogram_every_n_steps=0), enabled=True)
    for step, loss in synthetic(-0.03, steps=80, seed=2):
        logger.step(step, loss=loss, grad_norm=1.0, lrs={"unet": 1e-4}, images=4, timesteps=torch.tensor([1]))
        if step % 10 == 0:
            logger.scalar("val/held/mean", 0.2 - 0.01 * math.log(step), step)
            for band in range(2):
                logger.scalar(f"val/held/band_{band}", 0.1 * (band + 1) + 0.001 * (step % 20), step)
    logger.close()
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--trend-window", "40"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    scalars = read_run_curves(tmp_path / "run-a").scalars
    expected = [fit_log_step(tag, scalars[tag], 40)
                for tag in ("loss/raw", "val/held/mean", "val/held/band_0", "val/held/band_1")]
    assert expected[0].first_step == 41 and expected[1].points == 4
    rows = re.findall(r'<tr class="trend-row" data-verdict="([^"]*)"><th>([^<]*)</th><td[^>]*>[^<]*</td>'
                      r'<td class="words">([^<]*)</td>', html)
    assert [(v, unescape(c), unescape(w)) for v, c, w in rows] == [
        (fit.verdict, "training loss" if fit.tag == "loss/raw" else fit.tag, fit.words()) for fit in expected]
    assert rows[0][0] == "improving" and rows[1][0] == "improving"
    assert "over the latest 40 steps" in html and 'alt="run-a: loss trend on a log-step axis"' in html


def test_a_validation_set_with_too_few_points_is_one_row_not_one_per_band():
    from tunelab.report.build import trend_section

    curves = RunCurves("run", {"loss/raw": synthetic(-0.02, steps=40, seed=4),
                               **{f"val/held/{tag}": [(100, 0.2), (200, 0.19)]
                                  for tag in ("mean", "band_0", "band_1", "band_2")}})
    rows = trend_section(curves)["rows"]
    assert [row["curve"] for row in rows] == ["training loss", "val/held: mean and 3 bands"]
    assert rows[1]["words"] == "too few points to fit a trend (1 in steps 200–200; 3 needed)"
