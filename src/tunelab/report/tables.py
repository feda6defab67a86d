"""The report's tables as plain rows of cells, each cell coloured by its change against the first column or row
(the base model): green where the change is good, red where it is bad, stronger the larger it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.report.inputs import Scoreboard, ValidationResults
from tunelab.report.plots import band_label

# The toy world's concept groups (toy/evaluation.py) and what a finetune should do to each.
GROUP_ROLES = {"known": "kept", "retention": "kept", "half-known": "learned", "unknown": "learned"}
FULL_COLOUR_AT = 0.5  # a change of 50 points (scores) or 50 % (losses) gets the strongest colour


@dataclass
class Cell:
    text: str
    change: str = ""  # against the first column / row, e.g. "+12" points or "-3.1%"
    style: str = ""  # background colour
    title: str = ""


@dataclass
class Row:
    label: str
    cells: list[Cell]
    note: str = ""  # "learned", "kept", "lower is better", ...
    heading: bool = False  # a section heading spanning the table, no cells


@dataclass
class Table:
    columns: list[str]
    rows: list[Row] = field(default_factory=list)


def change_style(change: float, higher_is_better: bool | None) -> str:
    """Background for a change (fraction: points / 100 or relative change); none when neutral or tiny."""
    if higher_is_better is None or abs(change) < 0.005:
        return ""
    good = (change > 0) == higher_is_better
    alpha = 0.12 + 0.5 * min(1.0, abs(change) / FULL_COLOUR_AT)
    return f"background-color: rgba({'46, 160, 67' if good else '218, 54, 51'}, {alpha:.2f})"


def percent(share: float) -> str:
    """0.625 → "62%"; shares under 10 % keep a decimal (leakage is often 0.3 %, which "0%" would hide)."""
    return f"{share:.1%}" if 0 < share < 0.1 else f"{share:.0%}"


def points(change: float) -> str:
    """A change in percentage points: "+12", "-0.3" (small changes keep a decimal), "±0"."""
    change *= 100
    if change == 0:
        return "±0"
    return f"{change:+.1f}" if abs(change) < 1 else f"{change:+.0f}"


def share_cell(value: float, first: float | None, higher_is_better: bool | None, column: str) -> Cell:
    """A share (0..1) as a percentage; its change against the first column in percentage points."""
    if first is None:
        return Cell(percent(value), title=f"{column}: {value:.1%}")
    return Cell(percent(value), points(value - first), change_style(value - first, higher_is_better),
                f"{column}: {value:.1%} ({100 * (value - first):+.1f} points vs the first column)")


def loss_cell(value: float, reference: float | None, row: str, against: str = "the first row") -> Cell:
    """A loss; its relative change against a reference loss (lower loss is better)."""
    if reference is None or reference == 0:
        return Cell(f"{value:.4f}", title=f"{row}: {value:.6g}")
    relative = value / reference - 1
    return Cell(f"{value:.4f}", f"{100 * relative:+.1f}%", change_style(relative, False),
                f"{row}: {value:.6g} ({100 * relative:+.1f}% vs {against})")


def _concept_groups() -> dict[str, str]:
    from tunelab.toy.evaluation import evaluation_prompts

    return {p.concept: p.group for p in evaluation_prompts()}


def _share_row(label: str, values: dict[str, float | None], higher_is_better: bool | None, note: str = "") -> Row:
    models = list(values)
    first = values[models[0]]
    cells = []
    for i, model in enumerate(models):
        value = values[model]
        if value is None:
            cells.append(Cell("–", title=f"{model}: not measured"))
        else:
            cells.append(share_cell(value, None if i == 0 or first is None else first, higher_is_better, model))
    return Row(label, cells, note)


def scoreboard_table(board: Scoreboard, *, partial_credit: bool = False) -> Table:
    """Rows: groups, then concepts by group, then the checks that keep "learned" honest (the concept without any
    prompt, and other prompts drawn as it). Columns: models. With `partial_credit`: the share of expected
    attributes shown instead of the share of fully correct images."""
    scores = board.scores
    table = Table(columns=list(scores))

    def values(pick) -> dict[str, float | None]:
        return {model: pick(s) for model, s in scores.items()}

    per_concept = (lambda s: s.per_concept_attributes) if partial_credit else (lambda s: s.per_concept)
    if not partial_credit:
        table.rows.append(Row("groups (mean of their concepts)", [], heading=True))
        for group in dict.fromkeys(g for s in scores.values() for g in s.per_group):
            table.rows.append(_share_row(group, values(lambda s: s.per_group.get(group)), True,
                                         GROUP_ROLES.get(group, "")))
    known_groups = _concept_groups()
    concepts = list(dict.fromkeys(c for s in scores.values() for c in per_concept(s)))
    by_group: dict[str, list[str]] = {}
    for concept in concepts:
        by_group.setdefault(known_groups.get(concept, "other"), []).append(concept)
    for group, members in by_group.items():
        role = GROUP_ROLES.get(group)
        table.rows.append(Row(f"{group} concepts" + (f" (should be {role})" if role else ""), [], heading=True))
        for concept in members:
            table.rows.append(_share_row(concept, values(lambda s: per_concept(s).get(concept)), True))
    if partial_credit:
        return table
    checks = [(f"{c} with no prompt (chance)", lambda s, c=c: s.unconditional_chance.get(c), None, "")
              for c in dict.fromkeys(c for s in scores.values() for c in s.unconditional_chance)]
    checks += [(f"other prompts drawn as {c}", lambda s, c=c: s.leakage.get(c), False, "lower is better")
               for c in dict.fromkeys(c for s in scores.values() for c in s.leakage)]
    if checks:
        table.rows.append(Row("checks: is “learned” real?", [], heading=True))
        table.rows += [_share_row(label, values(pick), better, note) for label, pick, better, note in checks]
    return table


def validation_table(results: ValidationResults, set_name: str) -> Table:
    """Rows: models (the first is the reference, normally the base). Columns: the mean, then each band."""
    keys = [f"val/{set_name}/mean"] + [f"val/{set_name}/band_{k}" for k in range(len(results.bands))]
    table = Table(columns=["mean"] + [f"b{k}: t {band_label(b)}" for k, b in enumerate(results.bands)])
    first = results.models[0]
    for i, model in enumerate(results.models):
        cells = [loss_cell(model.scalars[key], None if i == 0 else first.scalars.get(key), model.name)
                 if key in model.scalars else Cell("–", title="not measured") for key in keys]
        table.rows.append(Row(model.name, cells, "reference" if i == 0 and len(results.models) > 1 else ""))
    return table
