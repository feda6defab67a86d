"""status.json in a run folder: the run's state (running / finished / interrupted / failed, with a one-line reason),
its step of the total, its speed, and the process writing it (pid, its start time, host), rewritten atomically
every few seconds while it trains and once when it ends.

`tunelab watch` reads only files: this is how it tells a run that is training from one whose process is gone. A
process killed with SIGKILL cannot write "interrupted"; its file stays "running" with a pid that no longer exists
(or now belongs to another process, which the recorded start time tells apart), and the reader says so. The write
also flushes the TensorBoard writer, so the curves on the page are as fresh as the step."""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Callable

from tunelab import atomic
from tunelab.errors import TunelabError

STATUS_FILE = "status.json"
WRITE_EVERY_S = 2.0  # a small atomic write: negligible next to a training step, fresh enough for a page
RATE_WINDOW_S = 60.0  # speed (and so the ETA) over the last minute, not since the start (which includes warm-up)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, /proc/PID/stat field 22), or None where there is no
    /proc: with the pid it names one process, not whichever process gets that pid next."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


class RunStatus:
    def __init__(self, output_dir: Path, *, total_steps: int, step: int, flush: Callable[[], None] | None = None,
                 every_s: float = WRITE_EVERY_S):
        self.path = Path(output_dir) / STATUS_FILE
        self.flush = flush
        self.every_s = every_s
        now = time.time()
        self.record = {"state": "running", "reason": "", "step": step, "total_steps": total_steps,
                       "images_per_s": None, "steps_per_s": None, "started": now, "updated": now,
                       "pid": os.getpid(), "pid_started": process_start_time(os.getpid()),
                       "host": socket.gethostname()}
        self.images = 0
        self.unwritten = 0  # writes that failed
        self.marks: deque[tuple[float, int, int]] = deque([(time.monotonic(), step, 0)])  # (clock, step, images)
        self.write()

    def step(self, step: int, images: int) -> None:
        """After optimizer step `step` (1-based) of `images` images; writes at most every `every_s` seconds."""
        self.images += images
        clock = time.monotonic()
        if clock - self.marks[-1][0] < self.every_s:
            return
        self.marks.append((clock, step, self.images))
        while len(self.marks) > 2 and clock - self.marks[1][0] >= RATE_WINDOW_S:
            self.marks.popleft()
        first_clock, first_step, first_images = self.marks[0]
        elapsed = clock - first_clock
        self.record.update(step=step, steps_per_s=(step - first_step) / elapsed,
                           images_per_s=(self.images - first_images) / elapsed)
        self.write()

    def end(self, state: str, reason: str = "", *, step: int | None = None) -> None:
        self.record.update(state=state, reason=reason, **({"step": step} if step is not None else {}))
        self.write(flush=False)  # the loop has closed the TensorBoard writer by now

    def write(self, *, flush: bool = True) -> None:
        """Best effort: a status file that cannot be written (disk full, folder gone) never stops the training nor
        hides the error the run is ending with; the reader then shows the last one written."""
        try:
            if flush and self.flush is not None:
                self.flush()
            self.record["updated"] = time.time()
            atomic.write_json(self.path, self.record)
        except OSError:
            self.unwritten += 1


def ended(error: BaseException | None, step: int, total_steps: int) -> tuple[str, str]:
    """(state, one-line reason) of a run that stopped at `step`, with `error` raised or None."""
    if error is None:
        if step >= total_steps:
            return "finished", ""
        return "interrupted", f"stopped at step {step} of {total_steps}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", f"interrupted (Ctrl-C or a signal) at step {step} of {total_steps}"
    if isinstance(error, SystemExit):  # tunelab.signals.Interrupted (SIGINT / SIGTERM) carries its own message
        message = getattr(error, "message", None) or f"exited (code {error.code})"
        return "interrupted", f"{message} (step {step} of {total_steps})"
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else "no message"
    named = message if isinstance(error, TunelabError) else f"{type(error).__name__}: {message}"
    return "failed", f"{named} (at step {step})"
