"""From per-image verdicts to the scoreboard: per setting and concept the pass rate, its paired change against the
base, a target's contamination (how often retain prompts and the empty prompt now show it), role-level pools, each
with its 95 % interval (score/intervals.py), and a verdict (score/verdicts.py).

A setting's runs are its training seeds: the arrays below are [seeds, images], and image i is the same (prompt,
sampling seed) in every model, the base included — which is what makes the change paired."""

from __future__ import annotations

import numpy as np

from tunelab.score import intervals, verdicts
from tunelab.score.judged import JudgedModel
from tunelab.score.probes import Probes

FORMAT = 2


def _stack(runs: list[JudgedModel], pick) -> np.ndarray:
    return np.array([pick(run) for run in runs], dtype=np.float64)


def _estimates(x: np.ndarray, b: np.ndarray | None, groups: np.ndarray) -> dict:
    """Rate (and paired change against the base when `b` is given), each image group (a prompt, or a concept in a
    pool) weighing the same; per-seed values for the report's per-seed view."""
    if np.bincount(groups).min() < 2:
        groups = np.zeros(x.shape[1], dtype=int)  # one image per prompt: no within-prompt noise to measure
    rate = intervals.rate(x, groups=groups)
    out = {"rate": rate.to_dict(), "per_seed": [round(float(v), 4) for v in rate.per_seed]}
    if b is not None:
        out["change"] = intervals.change(x, b[0], groups=groups).to_dict()
    return out


def _labels(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, k) for k, n in enumerate(counts)]) if counts else np.zeros(0, dtype=int)


def summarise(probes: Probes, judged: dict[str, list[JudgedModel]], base: str = "base") -> dict:
    thresholds = probes.spec.thresholds
    settings = list(judged)
    scored = [c for c in probes.concepts if c.name in judged[base][0].passed]
    samples = {c.name: probes.settings_for(c).samples_per_prompt for c in probes.concepts}
    prompt_groups = {c.name: _labels([samples[c.name]] * len(c.prompts)) for c in probes.concepts}
    # contamination images: every retain (uncond) concept's images in probe order, grouped by concept
    where_groups = {role: _labels([samples[c.name] * len(c.prompts) for c in probes.by_role(role)])
                    for role in ("retain", "uncond")}
    # a target whose expectation repeats an earlier one's (the same look, prompted otherwise) has the same
    # contamination: shown once, under the first
    first_with: dict[str, str] = {}
    same_as = {}
    for concept in probes.by_role("target"):
        key = repr(concept.expectation())
        if key in first_with:
            same_as[concept.name] = first_with[key]
        first_with.setdefault(key, concept.name)
    results: dict[str, dict] = {}
    roles: dict[str, dict] = {}
    for setting in settings:
        runs, is_base = judged[setting], setting == base
        per_concept = {}
        for concept in scored:
            x = _stack(runs, lambda r: r.passed[concept.name])
            b = None if is_base else _stack(judged[base], lambda r: r.passed[concept.name])
            entry = _estimates(x, b, prompt_groups[concept.name])
            if concept.role == "target" and concept.name not in same_as:
                entry["contamination"] = _contamination(runs, judged[base], [concept.name], is_base, where_groups)
            if not is_base:
                entry["verdict"] = _verdict(concept.role, entry, thresholds)
            per_concept[concept.name] = entry
        results[setting] = per_concept
        roles[setting] = {}
        for role in ("target", "retain"):
            members = [c.name for c in scored if c.role == role]
            if not members:
                continue
            pool = lambda r: [v for name in members for v in r.passed[name]]  # noqa: E731 — one pool per role
            x = _stack(runs, pool)
            b = None if is_base else _stack(judged[base], pool)
            entry = _estimates(x, b, _labels([len(judged[base][0].passed[name]) for name in members]))
            if role == "target":
                entry["contamination"] = _contamination(runs, judged[base], members, is_base, where_groups)
            if not is_base:
                entry["verdict"] = _verdict(role, entry, thresholds)
            roles[setting][role] = entry
    return {
        "format": FORMAT,
        "base": base,
        "settings": settings,
        "seeds": {s: len(judged[s]) for s in settings},
        "concepts": [{"name": c.name, "role": c.role, "group": c.group, "prompts": c.prompts,
                      "images": len(judged[base][0].passed.get(c.name, [])),
                      **({"contamination_as": same_as[c.name]} if c.name in same_as else {})}
                     for c in probes.concepts],
        "thresholds": thresholds.model_dump(),
        "results": results,
        "roles": roles,
    }


def _verdict(role: str, entry: dict, thresholds) -> dict:
    found = verdicts.concept_verdict(role, entry, thresholds)
    return {**found.to_dict(), "settle_text": found.settle.format() if found.settle else ""}


def _contamination(runs: list[JudgedModel], base_runs: list[JudgedModel], targets: list[str], is_base: bool,
                   where_groups: dict[str, np.ndarray]) -> dict:
    """How often the targets' expectations pass on the retain prompts' and the empty prompt's images (several
    targets: their checks pooled, each retain concept's images one group)."""
    out = {}
    for where in ("retain", "uncond"):
        groups = np.tile(where_groups[where], len(targets))
        if len(groups) < 2:
            continue
        pool = lambda r: [v for t in targets for v in r.contamination[t][where]]  # noqa: E731
        found = _estimates(_stack(runs, pool), None if is_base else _stack(base_runs, pool), groups)
        out[where] = found["rate"]
        if "change" in found:
            out[f"{where}_change"] = found["change"]
    return out
