"""The sweep's [score] step: `tunelab score` over the base and every finished variant (a setting trained with several
seeds is one column over its seeds), into output_dir/score — a re-run reuses every model already scored — and the
settings ranked by an objective: mean target gain minus (weighted) mean retain loss, from the role pools' changes
against the base; a setting whose contamination is above `contamination_max` is disqualified."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.score.intervals import format_estimate
from tunelab.sweep.config import Sweep
from tunelab.sweep.record import SweepRecord


def score_sweep(sweep: Sweep, record: SweepRecord, *, progress: bool = True) -> dict:
    from tunelab.score.judges import judge_for
    from tunelab.score.probes import load_probes
    from tunelab.score.run import plan_runs, score_models
    from tunelab.models.model_path import resolve_model_path

    config = sweep.config.score
    probes = load_probes(config.probes)
    if config.samples_per_prompt:
        probes = probes.with_samples(config.samples_per_prompt)
    judge = judge_for(probes, config.judge, config.judge_path)
    setting_of = {v.name: v.setting or v.name for v in sweep.variants}
    finished = [(setting_of[v.name], resolve_model_path(v.final_checkpoint)) for v in record.finished()]
    runs = plan_runs(sweep.base.model.path, finished)
    print(f"score: base + {len(finished)} finished runs with {probes.path.name} ({judge.name} judge)", flush=True)
    return score_models(probes, judge, runs, sweep.output_dir / "score", batch_size=config.batch_size,
                        progress=progress, log=lambda line: print(line, flush=True))


@dataclass
class Ranked:
    setting: str
    seeds: int
    target_gain: dict | None
    retain_change: dict | None
    contamination: dict | None  # the worse of the targets' pooled contamination in retain prompts / empty prompt
    learned: str  # "1 of 2"
    kept: str
    objective: float
    disqualified: bool


def rank_settings(board: dict, retain_weight: float = 1.0, contamination_max: float = 0.10) -> list[Ranked]:
    """Every setting but the base, best first; disqualified ones last."""
    ranked = []
    for setting in board["settings"]:
        if setting == board["base"]:
            continue
        roles = board["roles"].get(setting, {})
        target, retain = roles.get("target", {}), roles.get("retain", {})
        gain, change = target.get("change"), retain.get("change")
        found = [c for c in (target.get("contamination") or {}).values() if c.get("kind") == "rate"]
        worst = max(found, key=lambda c: c["value"]) if found else None
        objective = (gain["value"] if gain else 0.0) + retain_weight * min(0.0, change["value"] if change else 0.0)
        ranked.append(Ranked(setting, board["seeds"][setting], gain, change, worst,
                             _count(board, setting, "target", "learned"), _count(board, setting, "retain", "kept"),
                             objective, bool(worst and worst["value"] > contamination_max)))
    return sorted(ranked, key=lambda r: (r.disqualified, -r.objective))


def _count(board: dict, setting: str, role: str, verdict: str) -> str:
    names = [c["name"] for c in board["concepts"] if c["role"] == role and c["name"] in board["results"][setting]]
    hits = sum((board["results"][setting][n].get("verdict") or {}).get("verdict") == verdict for n in names)
    return f"{hits} of {len(names)}"


def format_ranking(board: dict, retain_weight: float = 1.0, contamination_max: float = 0.10) -> str:
    ranked = rank_settings(board, retain_weight, contamination_max)
    header = ["rank", "setting", "seeds", "targets learned", "target gain", "retains kept", "retain change",
              "contamination", "objective"]
    rows = []
    for k, r in enumerate(ranked, 1):
        rows.append(["–" if r.disqualified else str(k), r.setting, str(r.seeds), r.learned,
                     format_estimate(r.target_gain), r.kept, format_estimate(r.retain_change),
                     format_estimate(r.contamination),
                     f"{100 * r.objective:+.1f}" + (" (disqualified)" if r.disqualified else "")])
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.append(f"objective = mean target gain − {retain_weight:g} × mean retain loss (points, role pools vs base); "
                 f"contamination above {100 * contamination_max:.0f}% disqualifies; [95 % intervals]")
    return "\n".join(lines)

