"""Defect 3: `train.nonfinite = "skip"` skipped 19 of 20 steps silently (exit 0, 20 checkpoints of wrecked weights),
and one skipped step made `loss/smoothed` NaN for the rest of the run. Now: a warning line per skipped step, a limit
in a row and in all, a smoothed loss over the finite steps only, and the count in the run's record."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_run import base_config, small_sdxl, tiny_items  # noqa: E402

from tunelab.errors import TunelabError  # noqa: E402


def train(tmp_path, items, **tables):
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.config import RunConfig
    from tunelab.train.recipe import run_training

    config = RunConfig.model_validate(base_config(tmp_path / "run", **tables))
    batches = InMemoryBatches(items, batch_size=config.train.batch_size, seed=config.train.seed)
    return run_training(config, components=small_sdxl(), batches=batches)


def poisoned(count: int, bad: list[int]) -> dict:
    items = tiny_items(count)
    for i in bad:
        items["latents"][i, 0, 0, 0] = float("nan")
    return items


def skipped_lines(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^warning: step (\d+) skipped: loss nan, gradient norm nan", text, re.M)]


def test_skipping_stops_after_max_nonfinite_steps_in_a_row(tmp_path, capsys):
    with pytest.raises(TunelabError, match=r"^step 4: 4 non-finite steps in a row \(train.max_nonfinite_steps = 3\); "
                                           r"stopped"):
        train(tmp_path, poisoned(4, [1]), train={"nonfinite": "skip", "max_steps": 20, "max_nonfinite_steps": 3},
              checkpoint={"every_n_steps": 3})
    assert skipped_lines(capsys.readouterr().err) == [1, 2, 3, 4]  # one warning line per skipped step
    # the checkpoints it wrote before stopping hold the base weights' training (nothing of the NaN steps)
    progress = json.loads((tmp_path / "run/checkpoints/step-000003/state/progress.json").read_text())
    assert progress["nonfinite_skipped"] == 3


def test_skipped_steps_leave_the_smoothed_loss_finite_and_are_counted(tmp_path, capsys):
    # one bad item in 8, batches of 4: about every other step is skipped; the limit in all is max(10, 5 % of 8)
    run = train(tmp_path, poisoned(8, [5]), train={"nonfinite": "skip", "max_steps": 8},
                logging={"tensorboard": True, "loss_smoothing": 0.5})
    skipped = skipped_lines(capsys.readouterr().err)
    assert 0 < len(skipped) < 8 and run.progress.nonfinite_skipped == len(skipped)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    raw = {e.step: e.value for e in events.Scalars("loss/raw")}
    smoothed = {e.step: e.value for e in events.Scalars("loss/smoothed")}
    assert {s for s, v in raw.items() if math.isnan(v)} == set(skipped)
    assert smoothed and all(math.isfinite(v) for v in smoothed.values())
    assert json.loads((tmp_path / "run/run.json").read_text())["nonfinite_skipped_steps"] == len(skipped)
    final = json.loads((tmp_path / "run/checkpoints/step-000008/state/progress.json").read_text())
    assert final["nonfinite_skipped"] == len(skipped)
    from tunelab.report.build import write_report

    html = write_report(tmp_path / "run").read_text()
    assert f"{len(skipped)} optimizer step{'s' if len(skipped) != 1 else ''} skipped: loss or gradient not finite" in html
