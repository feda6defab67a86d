import os
import stat

import pytest

from tunelab import atomic


def test_written_file_has_plain_open_mode_not_mkstemp_private(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")  # what a plain open() gives under this process's umask
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == atomic.file_mode()
    assert mode & stat.S_IRGRP  # the usual umasks (022, 002) leave it group-readable, mkstemp's 0600 does not


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_whole_file(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_json(target, {"b": 2})
    assert target.read_text() == '{\n  "b": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
