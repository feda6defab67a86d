"""Atomic file writes: write to a temp file in the same folder, fsync, then rename over the target.

An interrupted write never leaves a half-written file under the final name (the corrupt-cache problem
users hit with other trainers). Everything written gets the mode a plain `open()` / `mkdir()` would give it under
the user's umask, never owner-only: checkpoints are often read by another user's A1111 / ComfyUI."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


def process_umask() -> int:
    """The umask now (read each time: a caller may change it). Read from /proc where there is one, because
    os.umask can only be read by setting it, which races with other threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What a plain open() gives a new file."""
    return 0o666 & ~process_umask()


def folder_mode() -> int:
    """What a plain mkdir() gives a new folder."""
    return 0o777 & ~process_umask()


def temp_folder(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new uniquely named folder in `parent` (tempfile.mkdtemp makes it owner-only: 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(folder, folder_mode())
    return folder


def plain_modes(root: Path) -> None:
    """Give `root` and everything under it the plain open() / mkdir() modes: libraries that write through their
    own temp files (safetensors ≥ 0.8 in `save_file`, hence transformers' save_pretrained) leave them 0600."""
    files, folders = file_mode(), folder_mode()
    os.chmod(root, folders)
    for parent, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(parent, name), folders)
        for name in filenames:
            os.chmod(os.path.join(parent, name), files)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`, on failure delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # after the write: a library may have replaced the file (0600 mkstemp)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(target, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def save_safetensors(target: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
