"""sweep.json: what happened to each variant — its overrides, status, final checkpoint, wall time and last smoothed
training loss — written atomically after every change, so a killed sweep leaves an exact account and a re-run
knows what is already done. A variant's wall time is summed over the sweeps that trained it (resumes add up)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelab import atomic
from tunelab.sweep.config import Sweep

Status = Literal["pending", "running", "done", "failed", "interrupted"]


@dataclass
class VariantRecord:
    name: str
    overrides: dict[str, Any]
    output_dir: str
    status: Status = "pending"
    reason: str = ""  # why it failed, or how it ran ("already finished", "resumed from step 2")
    final_checkpoint: str | None = None
    wall_s: float = 0.0
    last_smoothed_loss: float | None = None


@dataclass
class SweepRecord:
    path: Path  # output_dir/sweep.json
    sweep: str
    base: str
    variants: dict[str, VariantRecord] = field(default_factory=dict)

    @classmethod
    def start(cls, sweep: Sweep) -> "SweepRecord":
        """Fresh records for this sweep's variants; wall times of earlier sweeps of the same variants are kept."""
        path = sweep.output_dir / "sweep.json"
        earlier = _earlier_variants(path)
        record = cls(path, str(sweep.path), str(sweep.base_path))
        for variant in sweep.variants:
            kept = earlier.get(variant.name, {})
            record.variants[variant.name] = VariantRecord(
                variant.name, variant.overrides, str(variant.output_dir), wall_s=float(kept.get("wall_s", 0.0)),
                last_smoothed_loss=kept.get("last_smoothed_loss"))
        return record

    def update(self, name: str, **changes) -> VariantRecord:
        entry = self.variants[name]
        for key, value in changes.items():
            setattr(entry, key, value)
        self.write()
        return entry

    def write(self) -> None:
        atomic.write_json(self.path, {"sweep": self.sweep, "base": self.base,
                                      "variants": [asdict(v) for v in self.variants.values()]})

    def finished(self) -> list[VariantRecord]:
        return [v for v in self.variants.values() if v.status == "done"]


def _earlier_variants(path: Path) -> dict[str, dict]:
    """Variants of an earlier sweep.json by name; an unreadable one is ignored (it is rewritten in full)."""
    try:
        return {v["name"]: v for v in json.loads(path.read_text(encoding="utf-8"))["variants"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
