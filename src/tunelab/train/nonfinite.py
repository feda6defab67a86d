"""`train.nonfinite = "skip"`: a step whose loss or gradient norm is NaN/inf is skipped, with a warning line, and
the run stops once too many are: `train.max_nonfinite_steps` in a row, or more than that and
`train.max_nonfinite_fraction` of the run's steps in all. Without a limit a diverged run skipped nearly every step
and still exited 0, writing checkpoints of wrecked weights."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.train.config import TrainConfig


class NonfiniteSteps:
    def __init__(self, config: TrainConfig, total_steps: int, skipped_before: int = 0, *, verbose: bool = True):
        self.config, self.verbose = config, verbose
        self.in_row = 0
        self.skipped = skipped_before  # over the whole run, resumed parts included
        self.most = max(config.max_nonfinite_steps, math.ceil(config.max_nonfinite_fraction * total_steps))

    def record(self, step: int, loss: float, grad_norm: float, finite: bool) -> None:
        """After optimizer step `step` (1-based): count a skipped step, warn, and stop past the limits."""
        if finite:
            self.in_row = 0
            return
        if self.config.nonfinite == "stop":
            raise TunelabError(f"step {step}: loss {loss} / gradient norm {grad_norm} is not finite; "
                               "stopped (set train.nonfinite = \"skip\" to skip such steps)")
        self.in_row += 1
        self.skipped += 1
        if self.verbose:
            tqdm.write(f"warning: step {step} skipped: loss {loss:.4g}, gradient norm {float(grad_norm):.4g} "
                       f"({self.in_row} in a row, {self.skipped} in all)", file=sys.stderr)
        limit = self.config.max_nonfinite_steps
        if self.in_row > limit:
            raise TunelabError(f"step {step}: {self.in_row} non-finite steps in a row (train.max_nonfinite_steps = "
                               f"{limit}); stopped, the weights were not updated by them. Lower the learning rate "
                               "or resume from an earlier checkpoint")
        if self.skipped > self.most:
            raise TunelabError(f"step {step}: {self.skipped} non-finite steps skipped in all, more than "
                               f"{self.most} (train.max_nonfinite_steps / max_nonfinite_fraction); stopped")


def record_skipped(run_record: Path, skipped: int) -> None:
    """Add the count to the run's record (run.json, written when the run started)."""
    if skipped and run_record.is_file():
        record = json.loads(run_record.read_text())
        record["nonfinite_skipped_steps"] = skipped
        atomic.write_json(run_record, record)
