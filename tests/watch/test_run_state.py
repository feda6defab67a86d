"""A run's state from its status.json (written by the trainer's RunStatus): running with speed and ETA while its
process lives; interrupted when that process is gone or its pid now names another process; not checked on another
host; finished / interrupted / failed with a one-line reason from how the run ended."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tunelab.signals import Interrupted
from tunelab.train.run_status import RunStatus, ended
from tunelab.watch.run_state import format_duration, read_run_state


def rewrite(path, **changes) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_running_then_a_dead_or_reused_pid_reads_interrupted_and_another_host_is_not_checked(tmp_path):
    status = RunStatus(tmp_path, total_steps=100, step=10, every_s=0.05)
    for step in range(11, 16):
        time.sleep(0.06)
        status.step(step, images=4)
    state = read_run_state(tmp_path)
    assert (state.state, state.step, state.total_steps) == ("running", 15, 100) and state.reason == ""
    rate = json.loads((tmp_path / "status.json").read_text())["steps_per_s"]
    assert 0 < rate < 1 / 0.06 and state.eta_s == pytest.approx(85 / rate)
    assert state.images_per_s == pytest.approx(4 * rate)

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rewrite(tmp_path / "status.json", pid=gone.pid)
    state = read_run_state(tmp_path)
    assert state.state == "interrupted" and f"pid {gone.pid}) is gone" in state.reason and "step 15 of 100" in state.reason
    rewrite(tmp_path / "status.json", pid=os.getpid(), pid_started="1")
    assert read_run_state(tmp_path).state == "interrupted"  # this pid, but not the process that wrote the file
    rewrite(tmp_path / "status.json", host=socket.gethostname() + "-elsewhere")
    state = read_run_state(tmp_path)
    assert state.state == "running" and state.reason.startswith(f"on host {socket.gethostname()}-elsewhere: its "
                                                                "process cannot be checked from here")


@pytest.mark.parametrize("error, step, state, reason", [
    (None, 100, "finished", ""),
    (None, 40, "interrupted", "stopped at step 40 of 100"),
    (KeyboardInterrupt(), 40, "interrupted", "interrupted (Ctrl-C or a signal) at step 40 of 100"),
    (Interrupted(15, "interrupted at step 40; checkpoint saved; resume with --resume latest"), 40, "interrupted",
     "interrupted at step 40; checkpoint saved; resume with --resume latest (step 40 of 100)"),
    (SystemExit(1), 40, "interrupted", "exited (code 1) (step 40 of 100)"),
    (RuntimeError("out of memory\ndetails"), 3, "failed", "RuntimeError: out of memory (at step 3)"),
])
def test_how_a_run_ended_is_recorded_in_one_line(tmp_path, error, step, state, reason):
    status = RunStatus(tmp_path, total_steps=100, step=0)
    status.end(*ended(error, step, 100), step=step)
    read = read_run_state(tmp_path)
    assert (read.state, read.reason, read.step, read.eta_s) == (state, reason, step, None)


def test_a_folder_without_status_says_so_with_its_latest_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "step-000040").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".step-000060.tmp").mkdir()
    state = read_run_state(tmp_path)
    assert state.state == "unknown" and state.step == 40 and state.reason.endswith("latest checkpoint: step 40")
    (tmp_path / "status.json").write_bytes(b"\xff\xfe")
    assert read_run_state(tmp_path).reason.startswith("status.json could not be read (")


def test_durations_read_in_units_a_person_uses():
    assert [format_duration(s) for s in (7, 75, 3 * 3600 + 5 * 60, 2 * 86400 + 3 * 3600)] == \
        ["7 s", "1 min 15 s", "3 h 05 min", "2 d 3 h"]


def test_a_status_that_cannot_be_written_never_stops_the_run(tmp_path):
    """A full disk or a folder gone: the training (and the error it is ending with) go on; the status is best effort."""
    (tmp_path / "not-a-folder").write_text("a file where the run folder should be")

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    status = RunStatus(tmp_path / "not-a-folder", total_steps=10, step=0, flush=full_disk, every_s=0)
    status.step(1, images=4)
    status.end(*ended(RuntimeError("disk full"), 1, 10), step=1)
    assert status.unwritten == 3 and (tmp_path / "not-a-folder").read_text().startswith("a file")
