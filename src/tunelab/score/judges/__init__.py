"""Judges: images + what to see → per-image pass / fail and a score in [0, 1]. See `base.py` for the interface."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.score.judges.base import Expectation, Judge, Judged

__all__ = ["Expectation", "Judge", "Judged", "make_judge", "judge_for"]


def make_judge(name: str, path: str | Path | None = None, *, general_threshold: float = 0.35,
               character_threshold: float = 0.85) -> Judge:
    """The judge called `name`; `path` is the tagger's or CLIP model's folder (checked here, before any sampling)."""
    if name == "toy":
        # The toy world sits beside the stages: its judge is found by name here, the score stage never needs it.
        from tunelab.toy.score_judge import ToyJudge

        return ToyJudge()
    if name in ("tagger", "clip") and path is None:
        raise TunelabError(f"the {name} judge needs its model folder: give --judge-path DIR "
                           f"(or judge_options.path in the probes file)")
    if name == "tagger":
        from tunelab.score.judges.tagger import TaggerJudge

        return TaggerJudge(Path(path), general_threshold=general_threshold, character_threshold=character_threshold)
    if name == "clip":
        from tunelab.score.judges.clip import ClipJudge

        return ClipJudge(Path(path))
    raise TunelabError(f"unknown judge {name!r} (toy, tagger or clip)")


def judge_for(probes, name: str | None = None, path: str | Path | None = None) -> Judge:
    """The judge a probes file asks for (`judge`, `judge_options`), unless `name` / `path` override them."""
    options = probes.spec.judge_options
    return make_judge(name or probes.spec.judge, path or options.path, general_threshold=options.general_threshold,
                      character_threshold=options.character_threshold)
