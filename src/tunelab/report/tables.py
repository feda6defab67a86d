"""The report's tables as plain rows of cells, each cell coloured by its change against the first column or row
(the base model): green where the change is good, red where it is bad, stronger the larger it is."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.report.inputs import Scoreboard, ValidationResults
from tunelab.report.plots import band_label
from tunelab.score.intervals import format_estimate

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


def loss_cell(value: float, reference: float | None, row: str, against: str = "the first row") -> Cell:
    """A loss; its relative change against a reference loss (lower loss is better)."""
    if reference is None or reference == 0:
        return Cell(f"{value:.4f}", title=f"{row}: {value:.6g}")
    relative = value / reference - 1
    return Cell(f"{value:.4f}", f"{100 * relative:+.1f}%", change_style(relative, False),
                f"{row}: {value:.6g} ({100 * relative:+.1f}% vs {against})")


VERDICT_STYLES = {"learned": True, "improved": True, "kept": True, "forgotten": False, "not learned": False}


def _verdict_style(verdict: str) -> str:
    good = VERDICT_STYLES.get(verdict)
    if good is None:
        return ""
    return f"background-color: rgba({'46, 160, 67' if good else '218, 54, 51'}, 0.35)"


def estimate_cell(entry: dict | None, column: str, *, is_base: bool) -> Cell:
    """A pass rate with its interval; for a finetune also the paired change against the base and the verdict."""
    if not entry:
        return Cell("–", title=f"{column}: not measured")
    per_seed = entry.get("per_seed", [])
    seeds = (f"; per training seed: {', '.join(percent(v) for v in per_seed)}" if len(per_seed) > 1 else "")
    text = format_estimate(entry["rate"])
    if is_base or "change" not in entry:
        return Cell(text, title=f"{column}: {text}{seeds}")
    verdict = (entry.get("verdict") or {}).get("verdict", "")
    reason = (entry.get("verdict") or {}).get("reason", "")
    change = format_estimate(entry["change"])
    return Cell(text, f"{change} {verdict}".strip(), _verdict_style(verdict),
                f"{column}: {text}, change {change} points{seeds}" + (f" — {verdict}: {reason}" if reason else ""))


def scoreboard_table(board: Scoreboard) -> Table:
    """Rows: concepts grouped by role (the probes file's roles), then each target's contamination, then the role
    pools. Columns: settings, the base first. Every value with its 95 % interval; verdicts colour the cells."""
    table = Table(columns=[s + (f" ({board.seeds[s]} seeds)" if board.seeds.get(s, 1) > 1 else "")
                           for s in board.settings])
    base_results = board.results[board.base]
    titles = {"target": "targets (should be learned)", "retain": "retain (should be kept)", "uncond": "empty prompt"}
    for role, title in titles.items():
        concepts = [c for c in board.concepts if c["role"] == role and c["name"] in base_results]
        if not concepts:
            continue
        table.rows.append(Row(title, [], heading=True))
        for concept in concepts:
            cells = [estimate_cell(board.results[s].get(concept["name"]), s, is_base=s == board.base)
                     for s in board.settings]
            table.rows.append(Row(concept["name"], cells, concept.get("group", "")))
    targets = [c["name"] for c in board.concepts if c["role"] == "target" and c["name"] in base_results
               and "contamination_as" not in c]  # the same look as an earlier target: its rows are the same
    if targets:
        table.rows.append(Row("contamination: a target drawn without being asked (lower is better)", [], heading=True))
        for target in targets:
            for where, label in (("retain", "in retain prompts"), ("uncond", "from the empty prompt")):
                cells = []
                for s in board.settings:
                    found = (board.results[s].get(target) or {}).get("contamination", {})
                    entry = {"rate": found[where], "change": found.get(f"{where}_change")} if where in found else None
                    if entry and entry["change"] is None:
                        entry.pop("change")
                    cell = estimate_cell(entry, s, is_base=s == board.base)
                    if entry and "change" in entry:
                        cell.style = change_style(entry["change"]["value"], False)
                    cells.append(cell)
                table.rows.append(Row(f"{target} {label}", cells))
    if board.roles:
        table.rows.append(Row("roles: all their images pooled", [], heading=True))
        for role in ("target", "retain"):
            if any(role in board.roles.get(s, {}) for s in board.settings):
                table.rows.append(Row(role, [estimate_cell(board.roles.get(s, {}).get(role), s, is_base=s == board.base)
                                             for s in board.settings]))
    return table


def per_seed_table(board: Scoreboard) -> Table | None:
    """Each training seed's own pass rate per concept (settings trained with several seeds only)."""
    columns = [(s, k) for s in board.settings if board.seeds.get(s, 1) > 1 for k in range(board.seeds[s])]
    if not columns:
        return None
    table = Table(columns=[f"{s} seed {k + 1}" for s, k in columns])
    for concept in board.concepts:
        if concept["name"] not in board.results[board.base]:
            continue
        cells = []
        for s, k in columns:
            values = (board.results[s].get(concept["name"]) or {}).get("per_seed", [])
            cells.append(Cell(percent(values[k])) if k < len(values) else Cell("–"))
        table.rows.append(Row(concept["name"], cells))
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
