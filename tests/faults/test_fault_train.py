"""`tunelab train` hurt as long runs get hurt, each as a real process through the CLI: SIGKILL while pruning old
checkpoints and while writing one, SIGTERM / SIGINT (graceful stop, then a second signal), each resumed and compared
bit for bit (trained weights, optimizer, scheduler, data position) with one run that was never interrupted."""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest
from fault_setup import copy_data, finish, launch, same_training_state, tunelab_here, write_run

STEPS = 6  # checkpoints every 2 steps, keep_last = 1: each save from step 4 on prunes the one before


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_data, tiny_model_folder) -> Path:
    """The uninterrupted run, in this process (only the hurt runs need their own). The tests ask for it once their
    hurt runs are started, so that it trains while they do."""
    root = copy_data(toy_data, tmp_path_factory.mktemp("straight"))
    code, output = tunelab_here(root, "train", str(write_run(root, tiny_model_folder, steps=STEPS)))
    assert code == 0, output
    return root / "run/checkpoints" / f"step-{STEPS:06d}"


def start(tmp_path: Path, toy_data: Path, model: Path, name: str, *fault: str) -> tuple[Path, subprocess.Popen]:
    root = copy_data(toy_data, tmp_path / name)
    config = write_run(root, model, steps=STEPS)
    return root, launch(root, "train", str(config), fault=tuple(arg.replace("ROOT", str(root)) for arg in fault))


def resume(root: Path) -> tuple[int, str]:
    return tunelab_here(root, "train", "run.toml", "--resume", "latest")


def checkpoint_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_kill_while_pruning_or_writing_a_checkpoint_then_resume_is_bit_identical(tmp_path, toy_data, tiny_model_folder,
                                                                                  request):
    """Defect 1: a kill inside pruning left step-000002 with 3 of its 20 files under its real name."""
    rng = random.Random(14)
    prune_event, write_event = rng.randint(1, 12), rng.randint(1, 20)
    runs = {"prune": start(tmp_path, toy_data, tiny_model_folder, "prune",
                           "--kill-at-delete", f"ROOT/run/checkpoints:{prune_event}"),
            "write": start(tmp_path, toy_data, tiny_model_folder, "write",
                           "--kill-at-write", f"ROOT/run/checkpoints/.step-000004.tmp:{write_event}")}
    straight = request.getfixturevalue("straight")
    whole = checkpoint_files(straight)
    for name, (root, process) in runs.items():
        code, output = finish(process)
        assert code == -signal.SIGKILL and "killed at " in output, output
        print(name, output.strip().splitlines()[-1])
        # whatever a kill interrupts, every folder under a step name is a whole checkpoint
        for folder in (root / "run/checkpoints").glob("step-*"):
            assert checkpoint_files(folder) == whole, (name, folder.name)
    for name, (root, _) in runs.items():
        code, output = resume(root)
        assert code == 0, output
        checkpoints = runs[name][0] / "run/checkpoints"
        leftover = ".step-000002.deleting" if name == "prune" else ".step-000004.tmp"
        assert f"removed {checkpoints / leftover}: a half-" in output, output  # one line says what went
        assert not list(checkpoints.glob(".*"))
        assert same_training_state(straight, checkpoints / f"step-{STEPS:06d}") == [], name


def test_sigterm_and_sigint_stop_after_the_step_with_a_checkpoint_then_resume_is_bit_identical(
        tmp_path, toy_data, tiny_model_folder, request):
    """Defect 5: Ctrl-C exited 130 with no message and no save; SIGTERM died at once, losing every step since the
    last checkpoint. Now: the step finishes, a checkpoint with training state is written, one line, 130 / 143.
    SIGTERM lands inside step 3 (between checkpoints: one is written for it), SIGINT inside step 4 (a checkpoint
    step: it is not written twice)."""
    runs = {"TERM": start(tmp_path, toy_data, tiny_model_folder, "term", "--signal-at-step", "TERM:3"),
            "INT": start(tmp_path, toy_data, tiny_model_folder, "int", "--signal-at-step", "INT:4")}
    straight = request.getfixturevalue("straight")
    for name, (root, process) in runs.items():
        code, output = finish(process)
        step = 3 if name == "TERM" else 4
        assert code == 128 + getattr(signal, f"SIG{name}"), output
        assert f"interrupted at step {step}; checkpoint saved; resume with --resume latest" in output.splitlines()
        assert "Traceback" not in output
        checkpoints = root / "run/checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == [f"step-{step:06d}"]  # keep_last = 1, no temp
        assert (checkpoints / f"step-{step:06d}/state/optimizer.pt").is_file()
    for name, (root, _) in runs.items():
        code, output = resume(root)
        assert code == 0, output
        assert same_training_state(straight, runs[name][0] / f"run/checkpoints/step-{STEPS:06d}") == [], name


def test_resuming_a_finished_run_clears_what_a_kill_in_its_last_pruning_left(straight):
    """Found by bench/faults.py: a kill while the final checkpoint's save pruned the one before left
    `.step-000004.deleting`; `--resume latest` then said "already finished" and left it there."""
    root = straight.parents[2]
    leftover = root / "run/checkpoints/.step-000004.deleting"
    (leftover / "model").mkdir(parents=True)
    code, output = tunelab_here(root, "train", "run.toml", "--resume", "latest")
    assert code == 0 and "already finished" in output, output
    assert f"removed {leftover}: a half-deleted checkpoint" in output and not leftover.exists()


def test_a_second_signal_aborts_at_once(tmp_path, toy_data, tiny_model_folder):
    root, process = start(tmp_path, toy_data, tiny_model_folder, "twice", "--signal-at-step", "TERM:3:2")
    code, output = finish(process)
    assert code == -signal.SIGTERM and "interrupted at step" not in output, output
    assert [p.name for p in (root / "run/checkpoints").iterdir()] == ["step-000002"]
