"""The toy world's analytic judge behind the judge interface: an image passes when the pixel rules read every
expected family's label (`toy = { object = "shape", colour = "purple", shape = "star" }`); its score is the
fraction of expected families read correctly (partial credit)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from tunelab.score.judges.base import Expectation, Judge, Judged
from tunelab.toy.judge import FAMILIES, RULES_VERSION, Judgement, judge


class ToyJudge(Judge):
    name = "toy"

    def identity(self) -> str:
        return f"toy rules {RULES_VERSION}"

    def check(self, expectation: Expectation) -> str | None:
        if not expectation.toy:
            return "the toy judge needs a `toy` expectation (judge family → label)"
        unknown = sorted(set(expectation.toy) - set(FAMILIES))
        if unknown:
            return f"unknown toy judge famil{'ies' if len(unknown) > 1 else 'y'} {unknown} (known: {', '.join(FAMILIES)})"
        return None

    def read(self, images: Sequence[Image.Image]) -> list[Judgement]:
        return [judge(image) for image in images]

    def verdict(self, readings: list[Judgement], expectation: Expectation) -> Judged:
        expected = dict(expectation.toy)
        passed = [reading.matches(expected) for reading in readings]
        score = [sum(reading.labels.get(f) == label for f, label in expected.items()) / len(expected)
                 for reading in readings]
        return Judged(np.array(passed, dtype=bool), np.array(score, dtype=np.float64))
