"""Evaluation prompts of the toy world and how often a model draws what each one asks for.

Groups (what later stages — scoreboard, validation retention set — build on):
- `known`: colour × shape prompts the base world teaches (the finetune world also contains them);
- `half-known`: kiko (rare, eyes usually closed in the base world);
- `unknown`: zorb (never in the base world; the finetune world teaches it as a purple star);
- `retention`: known concepts the finetune world does not contain: cars, mira, locations.

A prompt is correct for an image when the judge reads every expected family's label from it; its attribute rate
gives partial credit (the fraction of expected attributes shown)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tunelab.toy.concepts import CHARACTERS, KNOWN_COLOURS, KNOWN_SHAPES, LOCATIONS, UNKNOWN_LOOK, UNKNOWN_TAG
from tunelab.toy.judge import judge

GROUPS = ("known", "half-known", "unknown", "retention")


@dataclass(frozen=True)
class EvalPrompt:
    concept: str
    group: str
    prompt: str
    expected: dict  # judge family → label

    def correct(self, image) -> bool:
        return judge(image).matches(self.expected)

    def attribute_rate(self, image) -> float:
        """Fraction of the expected attributes (all families but "object") the image shows: partial credit, e.g.
        a half-known character drawn with the right hair and shirt but without her eye colour scores 2/3."""
        labels = judge(image).labels
        attributes = [family for family in self.expected if family != "object"]
        return sum(labels.get(family) == self.expected[family] for family in attributes) / len(attributes)


def character_expectation(name: str) -> dict:
    return {"object": "character", **CHARACTERS[name]}


def evaluation_prompts() -> list[EvalPrompt]:
    prompts = [
        EvalPrompt(f"{c} {s}", "known", f"{c}, {s}", {"object": "shape", "colour": c, "shape": s})
        for c in KNOWN_COLOURS
        for s in KNOWN_SHAPES
    ]
    prompts.append(EvalPrompt("kiko", "half-known", "kiko", character_expectation("kiko")))
    prompts.append(EvalPrompt(UNKNOWN_TAG, "unknown", UNKNOWN_TAG, {"object": "shape", **UNKNOWN_LOOK}))
    prompts += [EvalPrompt(f"{c} car", "retention", f"{c}, car", {"object": "car", "colour": c}) for c in KNOWN_COLOURS]
    prompts.append(EvalPrompt("mira", "retention", "mira", character_expectation("mira")))
    prompts += [EvalPrompt(loc, "retention", loc, {"location": loc}) for loc in LOCATIONS]
    return prompts


def chance_rate(expected: dict, images) -> float:
    """How often `images` (e.g. unconditional samples) show `expected` anyway: the rate with no prompt at all."""
    images = list(images)
    return sum(judge(image).matches(expected) for image in images) / max(1, len(images))


@dataclass
class EvalSettings:
    samples_per_prompt: int = 16
    seed: int = 0
    steps: int = 12
    cfg_scale: float = 4.0
    sampler: str = "Euler"
    batch_size: int = 64


def sample_prompts(components, prompts: list[str], settings: EvalSettings, progress: bool = False) -> dict[str, list]:
    """prompt → images, `samples_per_prompt` seeds each (seed, seed+1, …: the same seeds for every prompt)."""
    from tunelab.evaluate.sampling import SampleRequest, SamplingEngine

    engine = SamplingEngine(components, batch_size=settings.batch_size, max_chunks=1, empty_prompt_as_zeros=True, progress=progress)
    requests = [
        SampleRequest(prompt=p, seed=settings.seed + k, steps=settings.steps, cfg_scale=settings.cfg_scale,
                      sampler=settings.sampler, width=32, height=32)
        for p in prompts
        for k in range(settings.samples_per_prompt)
    ]
    images = engine.render(requests)
    out: dict[str, list] = defaultdict(list)
    for request, image in zip(requests, images):
        out[request.prompt].append(image)
    return dict(out)


def evaluate_model(components, settings: EvalSettings | None = None, progress: bool = False) -> dict:
    """Correct rate per concept and per group, plus each expectation's chance rate on unconditional samples."""
    settings = settings or EvalSettings()
    prompts = evaluation_prompts()
    images = sample_prompts(components, [p.prompt for p in prompts] + [""], settings, progress)
    per_concept = {p.concept: sum(p.correct(im) for im in images[p.prompt]) / len(images[p.prompt]) for p in prompts}
    attributes = {p.concept: sum(p.attribute_rate(im) for im in images[p.prompt]) / len(images[p.prompt]) for p in prompts}
    per_group = {}
    for group in GROUPS:
        rates = [per_concept[p.concept] for p in prompts if p.group == group]
        per_group[group] = sum(rates) / len(rates)
    chance = {p.concept: chance_rate(p.expected, images[""]) for p in prompts if p.group in ("half-known", "unknown")}
    # "Learned" means little if every prompt now draws the new concept: how often the other prompts turn into it.
    unknown = next(p for p in prompts if p.group == "unknown")
    leakage = chance_rate(unknown.expected, [im for p in prompts if p.group != "unknown" for im in images[p.prompt]])
    return {"per_concept": per_concept, "per_group": per_group, "per_concept_attributes": attributes, "unconditional_chance": chance,
            "leakage": {unknown.concept: leakage}, "samples_per_prompt": settings.samples_per_prompt}
