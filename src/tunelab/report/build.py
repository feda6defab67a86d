"""`tunelab report RUN_DIR`: one HTML page of what a run folder holds — the concept scoreboard, the validation loss
per timestep band, training curves and the XYZ grids — that opens from disk, offline (no CDN, no framework).

Plots are inlined as PNG data URIs; grid images are linked where they lie, relative to the page. Everything that
comes from the user (prompts, model and folder names) is escaped by jinja2's autoescaping."""

from __future__ import annotations

import datetime
from pathlib import Path

from tunelab import __version__, atomic
from tunelab.report.gallery import grid_views
from tunelab.report.inputs import ReportInputs, ValidationResults, find_inputs
from tunelab.report.plots import training_plot, trend_plot, validation_plot
from tunelab.report.tables import Cell, Row, Table, loss_cell, per_seed_table, scoreboard_table, validation_table
from tunelab.report.training_curves import RunCurves, read_run_curves
from tunelab.report.trend import TooFewPoints, run_trend

TEMPLATE = "report.html"


def _relative(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def _has_all_bands(results: ValidationResults, set_name: str) -> bool:
    return all(f"val/{set_name}/band_{k}" in m.scalars for m in results.models for k in range(len(results.bands)))


def validation_section(path: Path, results: ValidationResults, folder: Path) -> dict:
    sets = [{"name": name, "item_count": count, "table": validation_table(results, name),
             "plot": validation_plot(results, name) if _has_all_bands(results, name) else None}
            for name, count in results.sets.items()]
    return {"source": _relative(path, folder), "seed": results.seed, "bands": len(results.bands), "sets": sets,
            "skipped": results.skipped}


def training_summary(runs: list[RunCurves], references: dict[str, tuple[str, float]]) -> Table:
    """One row per run: its last step, last smoothed loss, and each validation set's last mean (with its change
    against the reference model of that set, when validation.json has one)."""
    sets = sorted({s for run in runs for s in run.validation_sets()})
    table = Table(columns=["last step", "loss (smoothed)"] + [f"val/{s}/mean" for s in sets])
    for run in runs:
        step, loss = run.last_step(), run.last("loss/smoothed")
        cells = [Cell(str(step) if step is not None else "–"),
                 loss_cell(loss, None, run.name) if loss is not None else Cell("–", title="not logged")]
        for set_name in sets:
            value = run.last(f"val/{set_name}/mean")
            name, reference = references.get(set_name, ("", None))
            cells.append(loss_cell(value, reference, run.name, name) if value is not None
                         else Cell("–", title="not logged"))
        table.rows.append(Row(run.name, cells))
    return table


def validation_references(inputs: ReportInputs) -> dict[str, tuple[str, float]]:
    """set → (name, mean loss) of the first model of the first validation.json (normally the base)."""
    if not inputs.validations:
        return {}
    first = inputs.validations[0][1].models[0]
    return {name: (first.name, first.scalars[f"val/{name}/mean"])
            for name in inputs.validations[0][1].sets if f"val/{name}/mean" in first.scalars}


def trend_section(curves: RunCurves, window: int | None = None) -> dict:
    """One run's loss trend (report/trend.py): a row per curve with its verdict and numbers, the smoothed loss at
    the last step, and the plot on a log-step axis."""
    trend = run_trend(curves, window)
    rows = []
    if trend.training is not None:
        rows.append({"curve": "training loss", "verdict": trend.training.verdict, "words": trend.training.words()})
    for set_name, fits in trend.validation.items():
        if len(fits) > 1 and all(isinstance(fit, TooFewPoints) for fit in fits):  # one line, not one per band
            rows.append({"curve": f"val/{set_name}: mean and {len(fits) - 1} bands", "verdict": fits[0].verdict,
                         "words": fits[0].words()})
            continue
        rows += [{"curve": fit.tag, "verdict": fit.verdict, "words": fit.words()} for fit in fits]
    return {"run": curves.name, "ema": trend.last_ema, "median": trend.last_median,
            "step": (curves.scalars.get("loss/raw") or [(None, None)])[-1][0], "rows": rows,
            "skipped": len(curves.scalars.get("nonfinite_skipped_step", [])),  # train.nonfinite = "skip"
            "plot": trend_plot(curves, trend)}


def training_section(inputs: ReportInputs, trend_window: int | None = None) -> dict:
    """Curves of every run with scalars; runs whose event files hold none (empty, or unreadable: TensorBoard skips
    corrupt records) are named instead."""
    read = [read_run_curves(run) for run in inputs.runs]
    runs = [run for run in read if run.scalars]
    references = validation_references(inputs)
    return {"plot": training_plot(runs, references) if runs else None,
            "trends": [trend_section(run, trend_window) for run in runs],
            "trend_window": trend_window,
            "summary": training_summary(runs, references) if runs else None,
            "sources": [_relative(run / "tensorboard", inputs.folder) for run in inputs.runs],
            "without_scalars": [_relative(path / "tensorboard", inputs.folder)
                                for path, run in zip(inputs.runs, read) if not run.scalars],
            "reference": next(iter(references.values()))[0] if references else ""}


def report_context(inputs: ReportInputs, report_folder: Path, trend_window: int | None = None) -> dict:
    folder = inputs.folder
    scoreboards = [{"source": _relative(path, folder), "table": scoreboard_table(board),
                    "per_seed": per_seed_table(board), "judge": board.judge,
                    "samples": sorted({c.get("images", 0) for c in board.concepts if c.get("images")}),
                    "timings": board.timings_s}
                   for path, board in inputs.scoreboards]
    return {
        "title": folder.name,
        "folder": str(folder),
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "absent": inputs.absent(),
        "scoreboards": scoreboards,
        "findings": [{"source": _relative(path, folder), "rows": record.findings} for path, record in inputs.findings],
        "validations": [validation_section(path, results, folder) for path, results in inputs.validations],
        "training": training_section(inputs, trend_window) if inputs.runs else None,
        "grids": [view for grid_folder, record in inputs.grids for view in grid_views(grid_folder, record, report_folder)],
    }


def render_report(context: dict) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # prompts, model and folder names are user text
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    return environment.get_template(TEMPLATE).render(**context)


def write_report(run_folder: str | Path, out: str | Path | None = None, trend_window: int | None = None) -> Path:
    """Write the report of `run_folder` to `out` (default: RUN_FOLDER/report.html); return its path. `trend_window`:
    the loss trends are fitted over the latest this many steps (default: the latest half of the steps)."""
    inputs = find_inputs(run_folder)
    out = Path(out).resolve() if out else inputs.folder / "report.html"
    atomic.write_text(out, render_report(report_context(inputs, out.parent, trend_window)))
    return out
