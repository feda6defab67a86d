"""A run's state as its files tell it (status.json, written by the trainer: train/run_status.py), never by asking
the training process: running / finished / interrupted / failed with a one-line reason, step of total, speed, ETA.

A file saying "running" whose process is gone (killed with SIGKILL, the machine rebooted) reads "interrupted"; the
process is looked up by pid and its start time, so a pid reused by another process does not pass for the run. A run
on another host cannot be checked from here, which the reason says."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.train.run_status import STATUS_FILE, process_start_time


@dataclass
class RunState:
    state: str  # running | finished | interrupted | failed | unknown
    reason: str = ""
    step: int | None = None
    total_steps: int | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    updated: float | None = None  # unix time of the status file's last write

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)


def process_alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` exists and is the one that started at `started` (when both are known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = process_start_time(pid)
    return started is None or now is None or now == started


def latest_checkpoint_step(run: Path) -> int | None:
    """From the checkpoint folders' names (step-NNNNNN; a `.step-N.tmp` is still being written)."""
    steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step-*") if p.name[5:].isdigit()]
    return max(steps) if steps else None


def read_run_state(run: Path) -> RunState:
    path = run / STATUS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or "state" not in record:
            raise ValueError("no state in it")
    except FileNotFoundError:
        step = latest_checkpoint_step(run)
        seen = f"; latest checkpoint: step {step}" if step is not None else ""
        return RunState("unknown", f"no {STATUS_FILE} (a run from an older tunelab, or not started yet){seen}",
                        step=step)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return RunState("unknown", f"{STATUS_FILE} could not be read ({e})")
    state = RunState(str(record["state"]), str(record.get("reason", "")), record.get("step"),
                     record.get("total_steps"), record.get("images_per_s"), updated=record.get("updated"))
    if state.state != "running":
        return state
    pid, host = record.get("pid"), record.get("host")
    ago = f"{time.time() - state.updated:.0f} s ago" if isinstance(state.updated, (int, float)) else "at an unknown time"
    if host != socket.gethostname():
        state.reason = f"on host {host}: its process cannot be checked from here; last update {ago}"
    elif isinstance(pid, int) and not process_alive(pid, record.get("pid_started")):
        state.state = "interrupted"
        state.reason = (f"its process (pid {pid}) is gone without recording why (killed?); last update {ago} at step "
                        f"{state.step} of {state.total_steps}")
        return state
    rate = record.get("steps_per_s")
    if isinstance(rate, (int, float)) and rate > 0 and state.step is not None and state.total_steps:
        state.eta_s = max(0.0, (state.total_steps - state.step) / rate)
    return state


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
