"""The probes file (TOML): which prompts to sample, what a judge must see in each image, and what each concept
should do in a finetune. Strict like every tunelab config: an unknown key, role or judge is a one-line error naming
the file and the key. Example:

    judge = "tagger"                       # default judge: toy | tagger | clip (`--judge` overrides)

    [sampling]                             # for every concept unless it overrides a key
    samples_per_prompt = 16                # images per prompt, seeds seed, seed+1, … — the same for every model
    seed = 0
    steps = 20
    cfg_scale = 6.0
    sampler = "Euler a"
    width = 1024
    height = 1024
    negative_prompt = "lowres, bad anatomy"

    [thresholds]                           # verdicts (score/verdicts.py): what counts as learned / kept
    kept_max_loss = 0.10

    [[concepts]]
    name = "zorb"
    role = "target"                        # target: should be learned | retain: should be kept | uncond: ""
    prompts = ["zorb", "1girl, (zorb:1.2)"]
    expect = ["purple star"]               # tagger: every tag present …
    absent = ["multiple views"]            # … and none of these
    text = "a purple star"                 # clip: this text …
    alternatives = ["a circle", "a car"]   # … must beat these
    toy = { object = "shape", colour = "purple", shape = "star" }   # the toy world's pixel judge
    sampling = { samples_per_prompt = 32 }

A concept only needs the expectation of the judge it is scored with. The `uncond` role samples the empty prompt:
its images show how often a target appears unprompted (contamination); an expectation there is optional."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from tunelab.config import StrictModel, load_toml_config
from tunelab.errors import TunelabError, fail
from tunelab.evaluate.samplers import check_sampler
from tunelab.score.judges.base import Expectation
from tunelab.score.verdicts import VerdictThresholds

JUDGES = ("toy", "tagger", "clip")
ROLES = ("target", "retain", "uncond")


class SamplingSettings(StrictModel):
    samples_per_prompt: int = Field(16, ge=2)  # an interval needs the spread between a prompt's images
    seed: int = Field(0, ge=0, le=2**32 - 1)
    steps: int = Field(20, ge=1)
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    width: int = Field(512, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    negative_prompt: str = ""
    clip_skip: Optional[int] = Field(None, ge=1)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        try:
            return check_sampler(value)
        except TunelabError as e:
            raise ValueError(str(e)) from None


class SamplingOverrides(StrictModel):
    """The same keys as [sampling], each optional: a concept's own settings."""

    samples_per_prompt: Optional[int] = Field(None, ge=2)
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 1)
    steps: Optional[int] = Field(None, ge=1)
    cfg_scale: Optional[float] = None
    sampler: Optional[str] = None
    width: Optional[int] = Field(None, ge=8, multiple_of=8)
    height: Optional[int] = Field(None, ge=8, multiple_of=8)
    negative_prompt: Optional[str] = None
    clip_skip: Optional[int] = Field(None, ge=1)


class ConceptSpec(StrictModel):
    name: str = Field(min_length=1)
    role: Literal["target", "retain", "uncond"]
    prompts: list[str] = Field(default_factory=list)
    group: str = ""  # a label to group concepts in tables (e.g. "known shapes")
    expect: list[str] = Field(default_factory=list)
    absent: list[str] = Field(default_factory=list)
    text: Optional[str] = None
    alternatives: list[str] = Field(default_factory=list)
    toy: dict[str, Optional[str]] = Field(default_factory=dict)
    sampling: SamplingOverrides = Field(default_factory=SamplingOverrides)

    @model_validator(mode="before")
    @classmethod
    def _prompts_fit_role(cls, data):
        if not isinstance(data, dict):
            return data
        name = data.get("name", "?")
        prompts = data.get("prompts") or []
        if data.get("role") == "uncond":
            if any(str(p).strip() for p in prompts):
                raise ValueError(f"concept {name!r}: role 'uncond' samples the empty prompt; leave out `prompts`")
            return {**data, "prompts": [""]}
        if data.get("role") in ("target", "retain") and not prompts:
            raise ValueError(f"concept {name!r}: give at least one prompt")
        return data

    def expectation(self) -> Expectation:
        return Expectation(tags=tuple(self.expect), absent=tuple(self.absent), text=self.text,
                           alternatives=tuple(self.alternatives), toy=dict(self.toy))

    def has_expectation(self) -> bool:
        return bool(self.expect or self.absent or self.text or self.toy)


class JudgeOptions(StrictModel):
    """Settings of the judges that have any (the CLI's --judge-path gives the model folder)."""

    general_threshold: float = Field(0.35, gt=0, lt=1)  # tagger: the field's tagging tools' defaults
    character_threshold: float = Field(0.85, gt=0, lt=1)
    path: Optional[Path] = None  # a tagger or CLIP folder; relative to the probes file


class ProbesFile(StrictModel):
    judge: Literal["toy", "tagger", "clip"] = "toy"
    judge_options: JudgeOptions = Field(default_factory=JudgeOptions)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    empty_prompt_as_zeros: bool = False  # encode "" as the zero embedding (models trained with caption dropout to zeros)
    thresholds: VerdictThresholds = Field(default_factory=VerdictThresholds)
    concepts: list[ConceptSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "ProbesFile":
        names = [c.name for c in self.concepts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"concept names must be unique: {', '.join(repeated)} repeated")
        if not any(c.role == "target" for c in self.concepts) and not any(c.role == "retain" for c in self.concepts):
            raise ValueError("no concept with role 'target' or 'retain': nothing to score")
        return self


@dataclass(frozen=True)
class Probe:
    """One image to sample and judge: the same (concept, prompt, seed, settings) for every model."""

    concept: str
    prompt_index: int
    sample_index: int
    prompt: str
    settings: SamplingSettings

    @property
    def seed(self) -> int:
        return (self.settings.seed + self.sample_index) % 2**32

    @property
    def file_name(self) -> str:
        return f"p{self.prompt_index:02d}-s{self.seed}.png"


@dataclass
class Probes:
    path: Path
    spec: ProbesFile

    @property
    def concepts(self) -> list[ConceptSpec]:
        return self.spec.concepts

    def concept(self, name: str) -> ConceptSpec:
        return next(c for c in self.spec.concepts if c.name == name)

    def by_role(self, role: str) -> list[ConceptSpec]:
        return [c for c in self.spec.concepts if c.role == role]

    def settings_for(self, concept: ConceptSpec) -> SamplingSettings:
        overrides = concept.sampling.model_dump(exclude_none=True)
        try:
            return SamplingSettings(**{**self.spec.sampling.model_dump(), **overrides})
        except ValueError as e:
            raise fail(self.path, f"concepts.{concept.name}.sampling: {str(e).splitlines()[0]}") from None

    def probes(self, concept: ConceptSpec) -> list[Probe]:
        """The concept's images, prompt by prompt: seeds `seed`, `seed + 1`, … for each prompt."""
        settings = self.settings_for(concept)
        return [Probe(concept.name, k, i, prompt, settings)
                for k, prompt in enumerate(concept.prompts) for i in range(settings.samples_per_prompt)]

    def all_probes(self) -> list[Probe]:
        return [p for c in self.spec.concepts for p in self.probes(c)]

    def with_samples(self, samples_per_prompt: int) -> "Probes":
        """A copy sampling `samples_per_prompt` images per prompt for every concept (e.g. a quick smoke run)."""
        if samples_per_prompt < 2:
            raise fail(self.path, "samples per prompt must be at least 2 (an interval needs the spread between images)")
        spec = self.spec.model_copy(deep=True)
        spec.sampling.samples_per_prompt = samples_per_prompt
        for concept in spec.concepts:
            concept.sampling.samples_per_prompt = None
        return Probes(self.path, spec)

    def fingerprint(self) -> str:
        """Changes whenever anything that decides the sampled images or their verdicts changes."""
        text = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_judge(self, judge) -> None:
        """Every concept the judge must judge has what it needs: before any sampling, one line per problem."""
        for concept in self.spec.concepts:
            if concept.role == "uncond" and not concept.has_expectation():
                continue
            reason = judge.check(concept.expectation())
            if reason:
                raise fail(self.path, f"concept {concept.name!r} cannot be judged by the {judge.name} judge: {reason}")


def load_probes(path: str | Path) -> Probes:
    path = Path(path)
    spec = load_toml_config(ProbesFile, path)
    if spec.judge_options.path is not None and not spec.judge_options.path.is_absolute():
        spec.judge_options.path = (path.parent / spec.judge_options.path).resolve()
    return Probes(path, spec)
