"""A training run's TensorBoard scalars (what `train/logs.py` and the validation hook write), read back with
TensorBoard's own EventAccumulator: every event file of the folder, in order, all points kept."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

Series = list[tuple[int, float]]  # (step, value), in step order


@dataclass
class RunCurves:
    name: str
    scalars: dict[str, Series]

    def tags(self, prefix: str) -> list[str]:
        return sorted(tag for tag in self.scalars if tag.startswith(prefix))

    def validation_sets(self) -> list[str]:
        """Sets the validation hook logged as `val/<set>/mean`."""
        return sorted(tag.split("/")[1] for tag in self.scalars if tag.startswith("val/") and tag.endswith("/mean"))

    def last(self, tag: str) -> float | None:
        series = self.scalars.get(tag)
        return series[-1][1] if series else None

    def last_step(self) -> int | None:
        steps = [series[-1][0] for series in self.scalars.values() if series]
        return max(steps) if steps else None


def read_run_curves(run_folder: Path) -> RunCurves:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_folder / "tensorboard"), size_guidance={"scalars": 0})  # 0 = keep all
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        by_step = {event.step: event.value for event in accumulator.Scalars(tag)}  # a resumed run rewrites steps
        scalars[tag] = sorted(by_step.items())
    return RunCurves(name=run_folder.name, scalars=scalars)
