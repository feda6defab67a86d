"""The scoreboard as terminal text: per concept (grouped by role) and setting, the pass rate, its change against
the base with the 95 % interval of the change, and the verdict; then the targets' contamination; then the roles."""

from __future__ import annotations

from tunelab.score.intervals import format_estimate

ROLE_TITLES = {"target": "targets: should be learned", "retain": "retain: should be kept",
               "uncond": "empty prompt"}


def pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def cell(result: dict | None, is_base: bool) -> str:
    if not result:
        return "–"
    if is_base:
        return format_estimate(result["rate"])
    verdict = (result.get("verdict") or {}).get("verdict", "")
    return f"{pct(result['rate']['value'])} {format_estimate(result.get('change'))} {verdict}".rstrip()


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]


def format_scoreboard(board: dict) -> str:
    settings = board["settings"]
    base = board["base"]
    seeds = board.get("seeds", {})
    header = ["concept"] + [s + (f" ({seeds[s]} seeds)" if seeds.get(s, 1) > 1 else "") for s in settings]
    lines = [f"pass rate, change vs {base} in points [95 % interval], verdict — judge: {board.get('judge', '?')}"]
    rows: list[list[str]] = []
    for role in ("target", "retain", "uncond"):
        concepts = [c for c in board["concepts"] if c["role"] == role and c["name"] in board["results"][base]]
        if not concepts:
            continue
        rows.append([f"[{ROLE_TITLES[role]}]"] + [""] * len(settings))
        for concept in concepts:
            rows.append([concept["name"]] + [cell(board["results"][s].get(concept["name"]), s == base)
                                             for s in settings])
    targets = [c["name"] for c in board["concepts"] if c["role"] == "target" and "contamination_as" not in c]
    if targets:
        rows.append(["[contamination: target drawn without being asked]"] + [""] * len(settings))
        for target in targets:
            for where, label in (("retain", "in retain prompts"), ("uncond", "from the empty prompt")):
                values = []
                for s in settings:
                    found = (board["results"][s].get(target) or {}).get("contamination", {})
                    rate = found.get(where)
                    if rate is None:
                        values.append("–")
                    elif s == base:
                        values.append(format_estimate(rate))
                    else:
                        values.append(f"{pct(rate['value'])} {format_estimate(found.get(where + '_change'))}")
                rows.append([f"{target} {label}"] + values)
    rows.append(["[roles: all their images pooled]"] + [""] * len(settings))
    for role in ("target", "retain"):
        if any(role in board["roles"].get(s, {}) for s in settings):
            rows.append([f"{role} (mean)"] + [cell(board["roles"][s].get(role), s == base) for s in settings])
    lines += _table(header, rows)
    notes = _inconclusive_notes(board)
    if notes:
        lines.append("inconclusive — what would likely settle it:")
        lines += [f"  {n}" for n in notes]
    if any(seeds.get(s, 1) == 1 for s in settings if s != base):
        lines.append("settings with one training seed: intervals cover the sampled images only, not the spread "
                     "between training seeds (train more seeds to include it)")
    return "\n".join(lines)


def _inconclusive_notes(board: dict, limit: int = 12) -> list[str]:
    """Targets and role pools first (what a verdict on the run rests on), then retain concepts; at most `limit`."""
    notes = []
    for setting in board["settings"]:
        entries = [(f"{role} (mean)", e) for role, e in board["roles"].get(setting, {}).items()]
        entries += sorted(board["results"][setting].items(),
                          key=lambda item: item[0] not in {c["name"] for c in board["concepts"] if c["role"] == "target"})
        for name, result in entries:
            verdict = (result or {}).get("verdict") or {}
            if verdict.get("verdict") == "inconclusive" and verdict.get("settle_text"):
                notes.append(f"{setting} / {name}: {verdict['settle_text']}")
    if len(notes) > limit:
        notes = notes[:limit] + [f"… and {len(notes) - limit} more (scoreboard.json: verdict.settle)"]
    return notes
