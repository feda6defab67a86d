"""The judge interface. Judging is split in two so the expensive part runs once per image, however many concepts
are checked against it (a target's expectation is also checked on every retain and empty-prompt image, for
contamination):

    readings = judge.read(images)                 # model inference, batched: once per image
    judged = judge.verdict(readings, expectation)  # cheap: per image pass / fail and a score in [0, 1]

`check(expectation)` says, before any sampling, why a judge cannot judge a concept (None when it can)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Expectation:
    """What an image must show. Each judge reads the part it understands:
    `tags` / `absent` (tagger: every tag in `tags` present, none of `absent`), `text` + `alternatives` (CLIP: the
    text must beat every neutral alternative), `toy` (the toy judge: judge family → expected label)."""

    tags: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    text: str | None = None
    alternatives: tuple[str, ...] = ()
    toy: Mapping[str, str | None] = field(default_factory=dict)


@dataclass
class Judged:
    passed: np.ndarray  # bool [N]
    score: np.ndarray  # float [N], in [0, 1]

    def __post_init__(self) -> None:
        self.passed = np.asarray(self.passed, dtype=bool)
        self.score = np.clip(np.asarray(self.score, dtype=np.float64), 0.0, 1.0)
        if self.passed.shape != self.score.shape or self.passed.ndim != 1:
            raise ValueError(f"passed {self.passed.shape} and score {self.score.shape} must be the same 1-D shape")


class Judge(ABC):
    name: str = ""

    def identity(self) -> str:
        """Names what this judge would read from an image: the judge and its model's weights, thresholds or rules.
        A score folder judged by another identity is judged again from its saved images."""
        return self.name

    @abstractmethod
    def check(self, expectation: Expectation) -> str | None:
        """Why this judge cannot judge `expectation` (e.g. "no tags given"), or None when it can."""

    @abstractmethod
    def read(self, images: Sequence[Image.Image]) -> Any:
        """What the judge sees in each image (tag probabilities, embeddings, pixel labels): the expensive part."""

    @abstractmethod
    def verdict(self, readings: Any, expectation: Expectation) -> Judged:
        """Per image of `readings`: does it show `expectation`?"""

    def judge(self, images: Sequence[Image.Image], expectation: Expectation) -> Judged:
        return self.verdict(self.read(images), expectation)


def file_digest(*paths: Path) -> str:
    """A short SHA-256 over the files' bytes (a judge's weights: a retrained tagger at the same path differs)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
