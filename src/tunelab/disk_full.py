"""A full disk reads as one line: which folder, how much is free (and needed, when known), and what is still
intact. The libraries report it in their own words: OSError ENOSPC from Python, "database or disk is full" from
SQLite, and from torch.save only "basic_ios::clear" (C++ streams drop the errno), which is recognised by the free
space left where it was writing."""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

from tunelab.errors import TunelabError

NO_SPACE_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")
NEARLY_FULL = 64 * 2**20  # bytes free below which a failed write is taken for a full disk


def free_bytes(path: Path) -> int | None:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException, folder: Path | None = None) -> bool:
    """Whether `error` (raised while writing under `folder`) means the disk is full."""
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(e).lower() for text in NO_SPACE_TEXTS):
            return True
    if folder is None or not isinstance(error, (OSError, RuntimeError, sqlite3.Error)):  # failed writes
        return False
    free = free_bytes(folder)
    return free is not None and free < NEARLY_FULL


def size_text(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} KiB"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@contextlib.contextmanager
def one_line_when_full(folder: Path, doing: str, intact: str, *, needed: int | None = None,
                       cleanup: Callable[[], None] | None = None) -> Iterator[None]:
    """Turn a full-disk failure inside into `<folder>: disk full while <doing> (...); <intact>`, after `cleanup`
    (e.g. deleting the half-written temp folder, which also gives the space back)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001  only a full disk is translated; anything else is re-raised as it was
        if not is_disk_full(e, folder):
            raise
        free = free_bytes(folder)
        if cleanup is not None:
            cleanup()
        space = [f"{size_text(free)} free" if free is not None else "",
                 f"about {size_text(needed)} needed" if needed else ""]
        space_text = ", ".join(s for s in space if s)
        raise TunelabError(f"{folder}: disk full while {doing}" + (f" ({space_text})" if space_text else "")
                           + f"; {intact}") from None


def as_error(error: BaseException) -> TunelabError | None:
    """The CLI's last resort for a full disk no stage translated: one line naming the file, or None."""
    if not is_disk_full(error):
        return None
    for e in _chain(error):
        if isinstance(e, OSError) and e.filename:
            return TunelabError(f"{e.filename}: disk full ({e.strerror})")
    return TunelabError(f"disk full: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


def cache_writes(cache_dir: Path):
    """Around a cache build (`tunelab cache`, or `prepare` building caches)."""
    return one_line_when_full(cache_dir, "writing the cache", "the shards finished before it are intact: free "
                                         "space, then run `tunelab cache` again to continue from them")


def index_writes(index: Path):
    """Around `prepare_dataset`: SQLite rolls back the batch it was writing."""
    return one_line_when_full(Path(index).parent, f"writing the dataset index {Path(index).name}", "the rows "
                              "committed before it are kept: free space, then run `tunelab prepare` again")
