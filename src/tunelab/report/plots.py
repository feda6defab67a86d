"""The report's plots as PNG data URIs (the HTML file stays one file; the plots are small).

Figures are drawn on matplotlib's Agg canvas directly, not through pyplot, so building a report never touches the
caller's global matplotlib backend or state."""

from __future__ import annotations

import base64
import io
import math

from tunelab.report.inputs import ValidationResults
from tunelab.report.training_curves import RunCurves


def _figure(columns: int, *, width_per_plot: float = 5.2, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_per_plot * columns, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def band_label(band: tuple[int, int]) -> str:
    return f"{band[0]}–{band[1]}"


def validation_plot(results: ValidationResults, set_name: str) -> str:
    """Left: loss per timestep band, one line per model (log scale: low-noise bands are 10–50× larger). Right: each
    model's change against the first one (the base) per band, in %: where forgetting shows."""
    figure, (loss_axes, change_axes) = _figure(2)
    labels = [band_label(b) for b in results.bands]
    positions = list(range(len(labels)))
    first = results.models[0]
    for model in results.models:
        losses = [model.scalars[f"val/{set_name}/band_{k}"] for k in positions]
        base = [first.scalars[f"val/{set_name}/band_{k}"] for k in positions]
        loss_axes.plot(positions, losses, marker="o", label=model.name)
        change_axes.plot(positions, [100 * (v / b - 1) for v, b in zip(losses, base)], marker="o", label=model.name)
    loss_axes.set_yscale("log")
    loss_axes.set_ylabel("validation loss")
    loss_axes.set_title(f"val/{set_name}: loss per timestep band")
    change_axes.axhline(0, color="grey", linewidth=0.8)
    change_axes.set_ylabel(f"change vs {first.name} (%)")
    change_axes.set_title("change per band (higher = worse)")
    for axes in (loss_axes, change_axes):
        axes.set_xticks(positions, labels, rotation=30, fontsize=8)
        axes.set_xlabel("timestep band (t; left = least noise)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _data_uri(figure)


def _plot_series(axes, series, label: str, **style) -> None:
    axes.plot([step for step, _ in series], [value for _, value in series], label=label, **style)


def training_plot(runs: list[RunCurves], references: dict[str, tuple[str, float]] | None = None) -> str | None:
    """Every run on the same axes: training loss (raw faint, smoothed solid), each validation set's mean loss, and
    the learning rates. `references`: set → (model name, mean loss), drawn as a dashed line on that set's panel
    (the base model's loss from validation.json: training logs no step-0 value to compare with). None when the
    runs logged none of these."""
    references = references or {}
    panels = []
    if any(run.scalars.get("loss/raw") or run.scalars.get("loss/smoothed") for run in runs):
        panels.append(("training loss", "loss"))
    for set_name in sorted({s for run in runs for s in run.validation_sets()}):
        panels.append((f"val/{set_name}/mean", f"val/{set_name}/mean"))
    if any(run.tags("lr/") for run in runs):
        panels.append(("learning rate", "lr/"))
    if not panels:
        return None
    figure, all_axes = _figure(len(panels), width_per_plot=4.6)
    colours = {run.name: f"C{i % 10}" for i, run in enumerate(runs)}
    for axes, (title, key) in zip(all_axes, panels):
        for run in runs:
            colour = colours[run.name]
            if key == "loss":
                if run.scalars.get("loss/raw"):
                    _plot_series(axes, run.scalars["loss/raw"], f"{run.name} raw", color=colour, alpha=0.25, linewidth=0.8)
                if run.scalars.get("loss/smoothed"):
                    _plot_series(axes, run.scalars["loss/smoothed"], f"{run.name} smoothed", color=colour)
            elif key == "lr/":
                for i, tag in enumerate(run.tags("lr/")):
                    _plot_series(axes, run.scalars[tag], f"{run.name} {tag[3:]}", color=colour,
                                 linestyle=("-", "--", ":", "-.")[i % 4])
            elif run.scalars.get(key):
                _plot_series(axes, run.scalars[key], run.name, color=colour, marker="o")
        if key.startswith("val/") and key.split("/")[1] in references:
            name, value = references[key.split("/")[1]]
            axes.axhline(value, color="grey", linestyle="--", linewidth=1, label=name)
        axes.set_title(title)
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _data_uri(figure)


def trend_plot(curves: RunCurves, trend, *, smoothing: float = 0.9, median_window: int = 25) -> str | None:
    """One run's trends on a log-step axis (where the fit is a straight line): the raw training loss (faint), its EMA
    and windowed median, and the fitted line over the window; then per validation set its mean and bands, each with
    its fitted line. `trend`: report.trend.RunTrend of these curves. None when there is nothing to draw."""
    from tunelab.report.trend import LogStepFit, ema, training_loss_series, validation_tags, windowed_median

    raw = [(step, value) for step, value in training_loss_series(curves) if step >= 1]
    def drawable(tag: str) -> list:  # a log axis shows steps ≥ 1 (validation of the base runs at step 0)
        return [(s, v) for s, v in curves.scalars.get(tag, []) if s >= 1 and math.isfinite(v)]

    panels = (["loss"] if raw else []) + [s for s in trend.validation
                                          if any(drawable(t) for t in validation_tags(curves, s))]
    if not panels:
        return None
    figure, all_axes = _figure(len(panels), width_per_plot=4.6)

    def fitted(axes, fit, colour) -> None:
        if isinstance(fit, LogStepFit):
            axes.plot([fit.first_step, fit.last_step], [fit.at(fit.first_step), fit.at(fit.last_step)], color=colour,
                      linestyle="--", linewidth=1.6, label=f"fit: {fit.verdict}")

    for axes, panel in zip(all_axes, panels):
        if panel == "loss":
            steps, values = [s for s, _ in raw], [v for _, v in raw]
            axes.plot(steps, values, color="C0", alpha=0.25, linewidth=0.8, label="raw")
            axes.plot(steps, ema(values, smoothing), color="C0", label=f"EMA {smoothing:g}")
            axes.plot(steps, windowed_median(values, median_window), color="C1", label=f"median of {median_window}")
            fitted(axes, trend.training, "black")
            axes.set_title("training loss")
        else:
            plotted = []
            for i, (tag, fit) in enumerate(zip(validation_tags(curves, panel), trend.validation[panel])):
                series = drawable(tag)
                plotted += [v for _, v in series]
                colour = "black" if tag.endswith("/mean") else f"C{i % 10}"
                _plot_series(axes, series, tag.rsplit("/", 1)[1], color=colour, marker="o", markersize=3)
                fitted(axes, fit, colour)
            if plotted and min(plotted) > 0:
                axes.set_yscale("log")
            axes.set_title(f"val/{panel}: mean and bands")
        axes.set_xscale("log")
        axes.set_xlabel("optimizer step (log scale)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return _data_uri(figure)
