"""Which files under a folder were written atomically, seen from Python's audit events while real commands run.

A file counts as written atomically when it reached its final name by a rename: it was renamed there itself (a temp
file + `os.replace`), or it was inside a folder renamed there (a checkpoint, a diffusers folder built next to its
target). Three things fail the check: a file that appeared or changed under its final name without such a rename (a
library writing straight to the target, e.g. safetensors' or torch's own writers, which no `open` event shows); a
file that is no longer the one renamed there (another inode, size or mtime: replaced or rewritten afterwards); and any
Python `open` for writing of a path that is a final file at the end (an in-place rewrite). The README names the exceptions and how they recover: TensorBoard event files (appended
record by record) and SQLite databases (WAL journal)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sys
from pathlib import Path
from typing import Iterator

NOT_ATOMIC_BY_DESIGN = ("events.out.tfevents.*", "*.sqlite", "*.sqlite-wal", "*.sqlite-shm", "*.sqlite-journal")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class WriteAudit:
    def __init__(self, root: Path):
        self.root = str(Path(root).resolve())
        self.before = self.snapshot()
        self.opened_for_writing: set[str] = set()
        self.renamed_into_place: dict[str, tuple[int, int, int]] = {}  # final path → the file renamed there

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        found = {}
        for parent, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(parent, name)
                found[path] = identity(path)
        return found

    def inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def event(self, name: str, args: tuple) -> None:
        if name == "open":
            path, _, flags = args
            if isinstance(path, (str, bytes, os.PathLike)) and isinstance(flags, int) and flags & _WRITE_FLAGS:
                path = os.path.realpath(os.fsdecode(path))
                if self.inside(path):
                    self.opened_for_writing.add(path)
        elif name == "os.rename":
            source, target = (os.path.realpath(os.fsdecode(p)) for p in args[:2])
            if not self.inside(target):
                return
            if os.path.isdir(source):  # the folder's files reach their final names with it
                for parent, _, files in os.walk(source):
                    for file in files:
                        path = os.path.join(parent, file)
                        self.renamed_into_place[os.path.join(target, os.path.relpath(path, source))] = identity(path)
            else:
                self.renamed_into_place[target] = identity(source)

    def problems(self, *, written_by_the_test: tuple[str | os.PathLike, ...] = ()) -> list[str]:
        """Files written without a rename into place (new or changed since the audit began), then in-place writes."""
        mine = {os.path.realpath(p) for p in written_by_the_test}
        after = self.snapshot()
        found = []
        for path, stat in sorted(after.items()):
            if path in mine or self.before.get(path) == stat or _by_design(path):
                continue
            if path not in self.renamed_into_place:
                found.append(f"not renamed into place: {os.path.relpath(path, self.root)}")
            elif self.renamed_into_place[path] != stat:
                found.append(f"changed after it was renamed into place: {os.path.relpath(path, self.root)}")
        for path in sorted(self.opened_for_writing):
            if path in after and path not in mine and not _by_design(path):
                found.append(f"opened for writing under its final name: {os.path.relpath(path, self.root)}")
        return found


def identity(path: str) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _by_design(path: str) -> bool:
    return any(fnmatch.fnmatch(os.path.basename(path), pattern) for pattern in NOT_ATOMIC_BY_DESIGN)


_active: list[WriteAudit] = []


def _hook(name: str, args: tuple) -> None:
    if _active and name in ("open", "os.rename"):
        try:
            for audit in _active:
                audit.event(name, args)
        except Exception:  # noqa: BLE001 - an audit hook must never change what the audited call does
            pass


_installed = False


@contextlib.contextmanager
def audited_writes(root: str | os.PathLike) -> Iterator[WriteAudit]:
    """Record, while the block runs in this process, what is written under `root` (a hook cannot be removed: it is
    installed once and idles outside these blocks)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    audit = WriteAudit(Path(root))
    _active.append(audit)
    try:
        yield audit
    finally:
        _active.remove(audit)
