"""The sweep's answer as a table: per variant its status, wall time, last smoothed training loss, and each
validation set's mean loss with its change against the base model; `*` marks the lowest per set. And the listing
`tunelab sweep --dry-run` prints."""

from __future__ import annotations

from tunelab.sweep.config import Sweep
from tunelab.sweep.record import SweepRecord


def validation_means(validation: dict | None, record: SweepRecord) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(set names, {row name: {set: mean}}) with "base" for the base model's row; rows found by checkpoint path."""
    if not validation:
        return [], {}
    names_by_path = {v.final_checkpoint: v.name for v in record.variants.values() if v.final_checkpoint}
    sets = list(validation["sets"])
    means = {}
    for i, model in enumerate(validation["models"]):
        name = "base" if i == 0 and model["name"] == "base" else names_by_path.get(model["path"], model["name"])
        means[name] = {s: model["scalars"][f"val/{s}/mean"] for s in sets if f"val/{s}/mean" in model["scalars"]}
    return sets, means


def format_summary(record: SweepRecord, validation: dict | None = None) -> str:
    sets, means = validation_means(validation, record)
    base = means.get("base", {})
    best = {s: min((row[s], name) for name, row in means.items() if name != "base" and s in row)[1]
            for s in sets if any(name != "base" and s in row for name, row in means.items())}
    header = ["variant", "status", "wall s", "train loss"]
    for s in sets:
        header += [f"val/{s}", "vs base"]
    rows = []
    if base:
        rows.append(["base", "-", "-", "-"] + [cell for s in sets for cell in (f"{base[s]:.4f}", "")])
    for v in record.variants.values():
        row = [v.name, v.status, f"{v.wall_s:.1f}", f"{v.last_smoothed_loss:.4f}" if v.last_smoothed_loss is not None
               else "-"]
        for s in sets:
            value = means.get(v.name, {}).get(s)
            if value is None:
                row += ["-", ""]
                continue
            change = f"{100 * (value - base[s]) / base[s]:+.1f}%" if base.get(s) else ""
            row += [f"{value:.4f}" + ("*" if best.get(s) == v.name else " "), change]
        rows.append(row)
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    if sets:
        lines.append("* the variant with the lowest loss on that set (held_out: learned the data best; "
                     "retention: kept the most of what the base drew)")
    lines += [f"{v.name}: {v.reason}" for v in record.variants.values() if v.status == "failed"]
    return "\n".join(line.rstrip() for line in lines)


def format_dry_run(sweep: Sweep, *, parameters: bool = True) -> str:
    """Every variant with its overrides and output folder, and (loading the base model once) its trainable-parameter
    summary — or the reason it would fail at build time."""
    lines = [f"sweep {sweep.path}: {len(sweep.variants)} variants of {sweep.base_path} into {sweep.output_dir}"]
    components = None
    if parameters:
        from tunelab.train.recipe import load_components

        components = load_components(sweep.base)
    for variant in sweep.variants:
        settings = ", ".join(f"{k} = {v!r}" for k, v in variant.overrides.items()) or "(the base config)"
        lines.append(f"{variant.name}: {settings}")
        if components is not None:
            lines.append(f"    {trainable_summary(variant.config, components)}")
    return "\n".join(lines)


def trainable_summary(config, components) -> str:
    """The `total: … trainable (…)` line of `tunelab train --dry-run` (plan_trainable only reads the model)."""
    from tunelab.errors import TunelabError
    from tunelab.train.parameters import format_dry_run as parameter_table
    from tunelab.train.parameters import plan_trainable

    try:
        table = parameter_table(plan_trainable(components, config)).splitlines()
    except TunelabError as error:
        return f"would fail: {error}"
    return next(line for line in table if line.startswith("total:"))
