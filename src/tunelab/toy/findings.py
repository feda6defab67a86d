"""The practitioner's statements (DESIGN.md), each tested on the toy world: the comparison it rests on, the measured
effect with its 95 % interval, and a verdict — holds / does not hold / inconclusive. Disagreeing is a result.

Input: a folder `tunelab score` (or the demo) wrote with the toy probes — scoreboard.json, and per model its
judged.json and images — where the settings are named as the demo names them (te-off, te-on, te-only,
te-on-sdxl-71). A statement whose setting was not scored says so.

Each rule compares an interval with a margin from the probes file's thresholds: an effect "holds" when its interval
lies past zero in the stated direction, "does not hold" when it lies within the margin on the other side (too small
to matter, or the opposite), and is inconclusive otherwise."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tunelab import atomic
from tunelab.errors import fail
from tunelab.score import intervals
from tunelab.score.intervals import format_estimate
from tunelab.score.judged import safe_name
from tunelab.score.run import model_folder_names
from tunelab.toy.evaluation import RETENTION_GROUPS
from tunelab.toy.judge import judge

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


@dataclass
class Finding:
    statement: str
    comparison: str
    effect: dict | None = None  # an Estimate's dict (value, low, high, …)
    verdict: str = NOT_MEASURED
    detail: str = ""
    extra: dict = field(default_factory=dict)


class ScoreFolder:
    """Per-image verdicts of every scored model, read back from a score folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / "scoreboard.json"
        if not path.is_file():
            raise fail(self.folder, "no scoreboard.json here: run `tunelab demo` or `tunelab toy score` first")
        self.board = json.loads(path.read_text(encoding="utf-8"))
        self.thresholds = self.board.get("thresholds", {})
        self.concepts = {c["name"]: c for c in self.board["concepts"]}
        self.runs: dict[str, list[dict]] = {}
        for setting in self.board["settings"]:
            names = model_folder_names(setting, self.board["seeds"][setting])
            self.runs[setting] = [json.loads((self.folder / "models" / n / "judged.json").read_text()) for n in names]

    def has(self, setting: str) -> bool:
        return setting in self.runs

    def passed(self, setting: str, concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """[seeds, images] pass values of `concepts` pooled, and each image's concept as its group."""
        x = np.array([[v for c in concepts for v in run["passed"][c]] for run in self.runs[setting]], dtype=float)
        groups = np.concatenate([np.full(len(self.runs[setting][0]["passed"][c]), k) for k, c in enumerate(concepts)])
        return x, groups

    def images(self, setting: str, concept: str) -> list[list[Path]]:
        """Per training seed, the concept's image files in probe order."""
        names = model_folder_names(setting, self.board["seeds"][setting])
        return [sorted((self.folder / "models" / n / "images" / safe_name(concept)).glob("*.png"), key=_probe_order)
                for n in names]

    def result(self, setting: str, concept: str) -> dict:
        return self.board["results"][setting][concept]


def _probe_order(path: Path) -> tuple[int, int]:
    prompt, seed = path.stem.split("-s")
    return int(prompt[1:]), int(seed)


def _concepts(folder: ScoreFolder, role: str, groups: tuple[str, ...] | None = None, exclude_group: str = "") -> list[str]:
    return [n for n, c in folder.concepts.items() if c["role"] == role and (groups is None or c["group"] in groups)
            and c["group"] != exclude_group and n in folder.board["results"][folder.board["base"]]]


def _change(folder: ScoreFolder, setting: str, concepts: list[str]) -> dict:
    x, groups = folder.passed(setting, concepts)
    b, _ = folder.passed(folder.board["base"], concepts)
    return intervals.change(x, b[0], groups=groups).to_dict()


def _rule(effect: dict, margin: float) -> str:
    """The statement says the effect is a gain; `margin`: the smallest gain that matters. Holds: the interval lies
    above 0. Does not hold: it lies below `margin` (too small to matter, or a loss)."""
    low, high = effect["low"], effect["high"]
    if low > 0:
        return HOLDS
    if high < margin:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def _within(effect: dict, margin: float) -> str:
    """The statement says there is (almost) no effect: holds when the interval lies within ±margin."""
    if -margin < effect["low"] and effect["high"] < margin:
        return HOLDS
    if effect["low"] > margin or effect["high"] < -margin:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def _missing(statement: str, comparison: str, setting: str) -> Finding:
    return Finding(statement, comparison, None, NOT_MEASURED, f"setting {setting} was not scored")


def half_known_fixed(f: ScoreFolder, margin: float) -> Finding:
    s, c = "text encoders off: a concept the base half-knows gets fixed", "kiko pass rate, te-off − base"
    if not f.has("te-off"):
        return _missing(s, c, "te-off")
    effect = _change(f, "te-off", ["kiko"])
    return Finding(s, c, effect, _rule(effect, margin))


def unknown_not_learned(f: ScoreFolder, setting: str, statement: str, expect_learned: bool) -> Finding:
    """zorb: learned only if its verdict (gain past the threshold, contamination below its limit) says so."""
    c = f"zorb verdict in {setting} (change vs base; contamination from the empty prompt)"
    if not f.has(setting):
        return _missing(statement, c, setting)
    result = f.result(setting, "zorb")
    verdict = (result.get("verdict") or {}).get("verdict", "inconclusive")
    uncond = result.get("contamination", {}).get("uncond")
    learned = verdict == "learned"
    decided = verdict != "inconclusive"
    outcome = INCONCLUSIVE if not decided else (HOLDS if learned == expect_learned else DOES_NOT_HOLD)
    detail = f"verdict {verdict}" + (f"; drawn for the empty prompt {100 * uncond['value']:.0f}% "
                                     f"[{100 * uncond['low']:.0f}, {100 * uncond['high']:.0f}]" if uncond else "")
    return Finding(statement, c, result.get("change"), outcome, detail)


def content_kept(f: ScoreFolder, margin: float) -> Finding:
    s = "text encoders off: unrelated known concepts change only in style (their content is kept)"
    c = "pass rate of cars, mira, locations pooled, te-off − base; outline share of their images"
    if not f.has("te-off"):
        return _missing(s, c, "te-off")
    effect = _change(f, "te-off", _concepts(f, "retain", RETENTION_GROUPS))
    style = _style_change(f, "te-off", _concepts(f, "retain", RETENTION_GROUPS))
    return Finding(s, c, effect, _kept(effect, margin),
                   f"drawn in the finetune's outline style: {format_estimate(style)} points", {"style_change": style})


def _kept(effect: dict, margin: float) -> str:
    if effect["low"] > -margin:
        return HOLDS
    if effect["high"] < -margin:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def some_forgotten(f: ScoreFolder) -> Finding:
    s, c = "text encoders on: some known concepts are forgotten", "verdict of each retain concept, te-on vs base"
    if not f.has("te-on"):
        return _missing(s, c, "te-on")
    retain = _concepts(f, "retain")
    verdicts = {n: (f.result("te-on", n).get("verdict") or {}).get("verdict", "inconclusive") for n in retain}
    forgotten = [n for n, v in verdicts.items() if v == "forgotten"]
    worst = min(retain, key=lambda n: f.result("te-on", n)["change"]["value"])
    if forgotten:
        outcome = HOLDS
    elif all(v == "kept" for v in verdicts.values()):
        outcome = DOES_NOT_HOLD
    else:
        outcome = INCONCLUSIVE
    kept = sum(v == "kept" for v in verdicts.values())
    detail = (f"forgotten: {', '.join(forgotten) or 'none'}; kept {kept} of {len(retain)}; "
              f"largest loss: {worst} {format_estimate(f.result('te-on', worst)['change'])}")
    return Finding(s, c, f.result("te-on", worst)["change"], outcome, detail, {"forgotten": forgotten})


def only_content_changes(f: ScoreFolder, margin: float) -> Finding:
    s = "text encoders only: the content changes, not how it is drawn"
    c = "targets' pass rate te-only − base (content); outline share of retain images te-only − base (drawing)"
    if not f.has("te-only"):
        return _missing(s, c, "te-only")
    content = _change(f, "te-only", ["zorb", "kiko"])
    style = _style_change(f, "te-only", _concepts(f, "retain"))
    content_verdict, style_verdict = _rule(content, margin), _within(style, margin)
    if content_verdict == HOLDS and style_verdict == HOLDS:
        outcome = HOLDS
    elif DOES_NOT_HOLD in (content_verdict, style_verdict):
        outcome = DOES_NOT_HOLD
    else:
        outcome = INCONCLUSIVE
    return Finding(s, c, content, outcome, f"content {content_verdict}; drawing style change "
                                          f"{format_estimate(style)} points "
                                          f"({style_verdict} within ±{100 * margin:.0f})", {"style_change": style})


def partial_unet_forgets_less(f: ScoreFolder, margin: float) -> Finding:
    s = "text encoders on with part of the UNet (sdxl-71) forgets less than the full UNet at the same LR"
    c = "retain pass rate pooled, te-on-sdxl-71 − te-on (paired by image, training seeds independent)"
    for setting in ("te-on", "te-on-sdxl-71"):
        if not f.has(setting):
            return _missing(s, c, setting)
    retain = _concepts(f, "retain")
    x, groups = f.passed("te-on-sdxl-71", retain)
    y, _ = f.passed("te-on", retain)
    effect = intervals.difference(x, y, groups=groups).to_dict()
    full, partial = (format_estimate(_change(f, setting, retain)) for setting in ("te-on", "te-on-sdxl-71"))
    return Finding(s, c, effect, _rule(effect, margin), f"retain change vs base: full {full}, partial {partial}")


def quality_tags_misalign(f: ScoreFolder, margin: float) -> Finding:
    s = "quality tags in the captions act as a misalignment: prompting with them changes what is drawn"
    c = "targets' pass rate with 'masterpiece, best quality, ' in front − without, te-on (same model, same seeds)"
    if not f.has("te-on"):
        return _missing(s, c, "te-on")
    with_tags, groups = f.passed("te-on", ["zorb + quality tags", "kiko + quality tags"])
    without, _ = f.passed("te-on", ["zorb", "kiko"])
    effect = intervals.difference(with_tags, without, groups=groups, same_models=True).to_dict()
    if effect["low"] > 0 or effect["high"] < 0:
        outcome = HOLDS  # a change either way is a misalignment
    elif -margin < effect["low"] and effect["high"] < margin:
        outcome = DOES_NOT_HOLD
    else:
        outcome = INCONCLUSIVE
    return Finding(s, c, effect, outcome, "holds: the interval excludes 0; does not hold: it lies within "
                                          f"±{100 * margin:.0f} points")


def unconditional_works(f: ScoreFolder, margin: float) -> Finding:
    s = "unconditional generation still works after the finetune (valid, varied images from the empty prompt)"
    c = "share of empty-prompt images showing a recognisable subject, each finetune − base; distinct subjects"
    finetunes = [st for st in f.board["settings"] if st != f.board["base"]]
    uncond = [n for n, c in f.concepts.items() if c["role"] == "uncond"]  # judged only for contamination
    if not finetunes or not uncond:
        return Finding(s, c, None, NOT_MEASURED, "no finetune or no empty-prompt probe scored")
    base_valid, base_kinds = _validity(f, f.board["base"], uncond[0])
    worst, worst_setting, kinds = None, "", {}
    for setting in finetunes:
        valid, kinds[setting] = _validity(f, setting, uncond[0])
        effect = intervals.change(valid, base_valid[0]).to_dict()
        if worst is None or effect["value"] < worst["value"]:
            worst, worst_setting = effect, setting
    variety = min(kinds.values()) >= max(1, base_kinds // 2)
    outcome = _kept(worst, margin)
    if outcome == HOLDS and not variety:
        outcome = DOES_NOT_HOLD
    detail = (f"lowest: {worst_setting} {format_estimate(worst)}; distinct subjects base {base_kinds}, "
              + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    return Finding(s, c, worst, outcome, detail)


def _judged_images(f: ScoreFolder, setting: str, concept: str):
    for files in f.images(setting, concept):
        yield [judge(Image.open(p)) for p in files]


def _style_change(f: ScoreFolder, setting: str, concepts: list[str]) -> dict:
    """Share of the concepts' images drawn with an outline (the finetune world's style), setting − base."""
    def outline(st):
        per_seed = [[] for _ in range(f.board["seeds"][st])]
        for concept in concepts:
            for k, judged in enumerate(_judged_images(f, st, concept)):
                per_seed[k] += [j.labels["style"] == "outline" for j in judged]
        return np.array(per_seed, dtype=float)

    groups = np.concatenate([np.full(len(f.runs[setting][0]["passed"][c]), k) for k, c in enumerate(concepts)])
    return intervals.change(outline(setting), outline(f.board["base"])[0], groups=groups).to_dict()


def _validity(f: ScoreFolder, setting: str, concept: str) -> tuple[np.ndarray, int]:
    """[seeds, images]: the judge recognises a subject (a character, a coloured car, a coloured known shape); and
    how many distinct subjects the images show."""
    valid, kinds = [], set()
    for judged in _judged_images(f, setting, concept):
        row = []
        for j in judged:
            labels = j.labels
            subject = (labels.get("character") if labels.get("object") == "character"
                       else labels.get("colour") if labels.get("object") == "car"
                       else labels.get("colour") and labels.get("shape") and f"{labels['colour']} {labels['shape']}")
            row.append(bool(subject))
            if subject:
                kinds.add(f"{labels.get('object')}:{subject}")
        valid.append(row)
    return np.array(valid, dtype=float), len(kinds)


def evaluate_findings(folder: str | Path) -> list[Finding]:
    f = ScoreFolder(Path(folder))
    gain = f.thresholds.get("learned_min_gain", 0.2)
    kept = f.thresholds.get("kept_max_loss", 0.1)
    return [
        half_known_fixed(f, gain),
        unknown_not_learned(f, "te-off", "text encoders off: a concept the base cannot recognise is not learned",
                            expect_learned=False),
        content_kept(f, kept),
        unknown_not_learned(f, "te-on", "text encoders on: the unknown concept is learned", expect_learned=True),
        some_forgotten(f),
        only_content_changes(f, kept),
        partial_unet_forgets_less(f, kept),
        quality_tags_misalign(f, kept),
        unconditional_works(f, kept),
    ]


def write_findings(folder: str | Path, out: str | Path) -> list[dict]:
    findings = [asdict(finding) for finding in evaluate_findings(folder)]
    atomic.write_json(out, {"source": str(Path(folder) / "scoreboard.json"), "findings": findings})
    return findings


def format_findings(findings: list[dict]) -> str:
    lines = ["findings (the practitioner's statements on the toy world; effect in points [95 % interval]):"]
    for k, finding in enumerate(findings, 1):
        lines.append(f"{k}. {finding['statement']}")
        lines.append(f"   {finding['verdict'].upper()}: {format_estimate(finding['effect'])} — {finding['comparison']}")
        if finding["detail"]:
            lines.append(f"   {finding['detail']}")
    counts = {v: sum(f["verdict"] == v for f in findings) for v in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_MEASURED)}
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    return "\n".join(lines)
