"""Run one `tunelab` command (the real CLI: `tunelab.cli.main`) in this process, hurt at a seeded moment:

    python fault_run.py [--kill-at-step N | --signal-at-step SIG:N[:COUNT] | --kill-at-write DIR:N
                         | --kill-at-delete DIR:N] -- <tunelab arguments>

--kill-at-step N          SIGKILL inside training micro-batch N's loss (1-based, counted over this process)
--signal-at-step SIG:N    send SIG (INT / TERM) to this process there, COUNT times (a second one aborts at once)
--kill-at-write DIR:N     SIGKILL at the N-th file written or renamed under DIR (a temp file created, opened for
                          writing, or renamed into place: checkpoint, cache shard or catalogue writes)
--kill-at-delete DIR:N    SIGKILL at the N-th file deleted by a folder deletion (shutil.rmtree) under DIR: pruning

Python audit events see every open / rename / remove, so the kill lands between two real file operations. The
process prints `killed <where>` first, so the test can tell where it landed. bench/faults.py uses the same hooks."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def die(where: str) -> None:
    print(f"killed {where}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def at_training_loss(n: int, action) -> None:
    """Call `action()` inside the n-th call of the training loss (one per micro-batch)."""
    import tunelab.train.loop as loop

    real, calls = loop.training_loss, 0

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            action()
        return real(*args, **kwargs)

    loop.training_loss = counted


def send(signum: int, count: int) -> None:
    for _ in range(count):
        os.kill(os.getpid(), signum)


WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def at_file_event(folder: str, n: int, kind: str) -> None:
    """SIGKILL at the n-th write (or delete) event under `folder`."""
    prefix, events, deleting = os.path.abspath(folder), 0, False

    def hook(name: str, args: tuple) -> None:
        nonlocal events, deleting
        if kind == "delete":
            if name == "shutil.rmtree":  # rmtree deletes by names relative to a folder fd: arm on its root
                deleting = os.path.abspath(os.fsdecode(args[0])).startswith(prefix)
                return
            if not (deleting and name in ("os.remove", "os.rmdir")):
                return
            where = os.fsdecode(args[0])
        else:
            if name not in ("open", "os.rename") or isinstance(args[0], int):
                return
            if name == "open" and not (isinstance(args[2], int) and args[2] & WRITES):
                return
            where = os.path.abspath(os.fsdecode(args[0]))
            if not where.startswith(prefix):
                return
        events += 1
        if events == n:
            die(f"at {kind} event {n}: {name} {os.path.relpath(where, prefix) if os.path.isabs(where) else where}")

    sys.addaudithook(hook)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--signal-at-step")
    parser.add_argument("--kill-at-write")
    parser.add_argument("--kill-at-delete")
    parser.add_argument("tunelab", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.kill_at_step:
        at_training_loss(args.kill_at_step, lambda: die(f"in training micro-batch {args.kill_at_step}"))
    if args.signal_at_step:
        name, n, *count = args.signal_at_step.split(":")
        signum = getattr(signal, f"SIG{name}")
        at_training_loss(int(n), lambda: send(signum, int(count[0]) if count else 1))
    for kind in ("write", "delete"):
        spec = getattr(args, f"kill_at_{kind}")
        if spec:
            folder, n = spec.rsplit(":", 1)
            at_file_event(folder, int(n), kind)
    from tunelab.cli import main as tunelab_main

    sys.argv = ["tunelab", *[a for a in args.tunelab if a != "--"]]
    tunelab_main()


if __name__ == "__main__":
    main()
