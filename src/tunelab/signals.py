"""Graceful stop on SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it ends a job).

`tunelab.cli.main` installs the handlers for every command. By default a signal raises `Interrupted` where the
program is, like Ctrl-C's KeyboardInterrupt: every write is atomic and SQLite rolls back its open transaction, so
`prepare` and `cache` keep what they finished and continue from there when run again. The training loop instead
`defer`s: a signal only sets a flag, the loop finishes its optimizer step, writes a checkpoint and raises
`Interrupted` with the step. A second signal aborts at once (the default action of that signal).

`Interrupted` is a SystemExit (exit code 128 + signal number: 130 for SIGINT, 143 for SIGTERM): `except Exception`
blocks let it through, and typer, which turns KeyboardInterrupt into a silent exit 130, does not catch it."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(SystemExit):
    """The run stopped on a signal; `str()` is the one line the CLI prints; `step`: the training step checkpointed."""

    def __init__(self, signum: int, message: str, *, step: int | None = None):
        super().__init__(128 + signum)
        self.signum, self.message, self.step = signum, message, step

    def __str__(self) -> str:
        return self.message


_requested: int | None = None  # the first signal received
_deferred = 0  # > 0 while some code checks `requested()` itself at safe points


def _handle(signum, frame) -> None:
    global _requested
    if _requested is not None:  # the second signal: abort now, as if no handler were installed
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _requested = signum
    if not _deferred:
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}); finished work is kept: run the "
                                  "same command again to continue")


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Install the handlers for the duration (main thread only; elsewhere a no-op)."""
    global _requested
    try:
        previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    except ValueError:  # not the main thread: leave signals to whoever owns it
        yield
        return
    _requested = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside: a signal is only recorded; the caller polls `requested()` and stops at a safe point."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1


def deferring(function: F) -> F:
    """`function` runs under `deferred()`."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with deferred():
            return function(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def requested() -> int | None:
    """The signal number received (under `graceful_stop`), or None."""
    return _requested
