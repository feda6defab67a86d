"""The index stores images under its own folder by relative path: a dataset folder copied or moved with its index
reads its own images (not the old ones), a re-prepare in the copy keeps every id, an image outside the folder keeps
its absolute path, and an index written with absolute paths is rewritten to relative ones on its next prepare."""

import shutil
import sqlite3

import numpy as np
from tiny_dataset import make_dataset

from tunelab.data.images import load_rgb
from tunelab.data.index import DatasetIndex, IndexItem
from tunelab.data.prepare import prepare_dataset


def stored_paths(index_path):
    with sqlite3.connect(index_path) as db:
        return [row[0] for row in db.execute("SELECT path FROM items ORDER BY id")]


def test_copied_dataset_folder_reads_its_own_images(tmp_path):
    config = make_dataset(tmp_path / "a", 6)
    assert all(p.startswith("images/") for p in stored_paths(config.index))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")  # the old images are gone: the copy must not point at them
    with DatasetIndex.open_existing(tmp_path / "b" / "index.sqlite") as index:
        items = list(index.iter_items(split=None))
        ids = [item.id for item in items]
        assert len(items) == 6 and all(item.path.startswith(str(tmp_path / "b" / "images")) for item in items)
        assert all(np.asarray(load_rgb(item.path)).size for item in items)
        assert index.find_by_paths([items[0].path]) == {items[0].path: items[0]}
    copied = config.model_copy(update={"index": tmp_path / "b" / "index.sqlite",
                                       "sources": [s.model_copy(update={"path": tmp_path / "b" / "images"})
                                                   for s in config.sources]})
    stats = prepare_dataset(copied, progress=False)
    assert "6 items indexed" in stats.summary()
    with DatasetIndex.open_existing(tmp_path / "b" / "index.sqlite") as index:
        assert [item.id for item in index.iter_items(split=None)] == ids


def test_outside_paths_stay_absolute_and_old_absolute_indexes_are_rewritten(tmp_path):
    inside, outside = str(tmp_path / "data" / "images" / "x.png"), str(tmp_path / "elsewhere" / "y.png")
    with DatasetIndex(tmp_path / "data" / "index.sqlite") as index:
        index.write_items([IndexItem(path=inside), IndexItem(path=outside)])
    assert stored_paths(tmp_path / "data" / "index.sqlite") == ["images/x.png", outside]
    with sqlite3.connect(tmp_path / "data" / "index.sqlite") as db:  # as an index written before this change
        db.execute("UPDATE items SET path = ? WHERE path = 'images/x.png'", (inside,))
        db.execute("DELETE FROM meta WHERE key = 'relative_paths'")
    with DatasetIndex.open_existing(tmp_path / "data" / "index.sqlite") as index:  # read-only: read as it is
        assert [item.path for item in index.iter_items(split=None)] == [inside, outside]
    with DatasetIndex(tmp_path / "data" / "index.sqlite") as index:  # prepare opens it for writing
        assert [(item.id, item.path) for item in index.iter_items(split=None)] == [(1, inside), (2, outside)]
    assert stored_paths(tmp_path / "data" / "index.sqlite") == ["images/x.png", outside]
