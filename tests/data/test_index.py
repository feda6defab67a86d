"""The SQLite dataset index: stable ids on upsert, split/bucket iteration in id order, counts, lookups."""

import sqlite3

import pytest

from tunelab.data.index import SKIPPED, VALIDATION, DatasetIndex, IndexItem
from tunelab.errors import TunelabError


def _items(n, *, bucket_of=lambda i: (64, 64) if i % 3 else (96, 32)):
    for i in range(n):
        w, h = bucket_of(i)
        yield IndexItem(
            path=f"/img/{i:05d}.png", width=w * 2, height=h * 2, bucket_width=w, bucket_height=h,
            tags=f"tag{i}, common", caption=None if i % 2 else f"caption {i}",
            tag_categories={"character": [f"c{i}"]} if i == 4 else None,
            split=VALIDATION if i % 10 == 0 else "train",
            status=SKIPPED if i % 7 == 6 else "ok", skip_reason="too_small" if i % 7 == 6 else None,
        )


def test_write_then_read_back_by_split_bucket_and_id(tmp_path):
    with DatasetIndex(tmp_path / "i.sqlite") as index:
        assert index.write_items(_items(100), batch_rows=16) == 100
        expected = [i for i in _items(100)]
        ok_train = [e for e in expected if e.status == "ok" and e.split == "train"]
        assert index.count() == len(ok_train)
        assert index.count(split=None, status=None) == 100
        assert index.count(split=VALIDATION) == sum(1 for e in expected if e.status == "ok" and e.split == VALIDATION)
        read = list(index.iter_items(chunk_rows=7))  # several keyset pages
        assert [r.path for r in read] == [e.path for e in ok_train]
        assert [r.id for r in read] == sorted(r.id for r in read)
        narrow = [e for e in ok_train if e.bucket == (96, 32)]
        assert [r.path for r in index.iter_items(bucket=(96, 32), chunk_rows=3)] == [e.path for e in narrow]
        assert index.bucket_counts() == {(64, 64): len(ok_train) - len(narrow), (96, 32): len(narrow)}
        assert index.skip_counts() == {"too_small": sum(1 for e in expected if e.status == SKIPPED)}
        four = index.find_by_paths(["/img/00004.png"])["/img/00004.png"]
        assert four.tag_categories == {"character": ["c4"]} and four.caption == "caption 4"
        assert index.get(four.id) == four
        ids = index.item_ids(bucket=(64, 64))
        assert [it.id for it in index.get_many(ids[::-1])] == ids[::-1]
        with pytest.raises(KeyError):
            index.get(10_000)


def test_upsert_keeps_ids_and_delete_unseen_drops_removed_files(tmp_path):
    with DatasetIndex(tmp_path / "i.sqlite") as index:
        index.write_items(_items(10), seen_run=1)
        ids_before = {it.path: it.id for it in index.iter_items(split=None, status=None)}
        changed = [IndexItem(path=f"/img/{i:05d}.png", caption="new") for i in range(2, 10)]
        index.write_items(changed, seen_run=2)
        assert index.delete_unseen(2) == 2
        after = {it.path: it for it in index.iter_items(split=None, status=None)}
        assert sorted(after) == [f"/img/{i:05d}.png" for i in range(2, 10)]
        assert all(after[p].id == ids_before[p] and after[p].caption == "new" for p in after)


def test_wal_mode_subsets_meta_and_readonly(tmp_path):
    path = tmp_path / "i.sqlite"
    with DatasetIndex(path) as index:
        sid = index.upsert_subset("10_cat", repeats=10, caption_options={"keep_tokens": 1})
        assert index.upsert_subset("10_cat", repeats=3) == sid
        index.set_meta("config", {"a": 1})
        index.write_items([IndexItem(path="/x.png", subset_id=sid)])
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with DatasetIndex.open_existing(path) as index:
        assert index.subsets()[sid].repeats == 3 and index.subsets()[sid].caption_options == {}
        assert index.get_meta("config") == {"a": 1}
        with pytest.raises(sqlite3.OperationalError):
            index.write_items([IndexItem(path="/y.png")])


def test_opening_something_else_is_one_clear_error(tmp_path):
    with pytest.raises(TunelabError, match="dataset index not found"):
        DatasetIndex.open_existing(tmp_path / "missing.sqlite")
    (tmp_path / "image.png").write_bytes(b"\x89PNG not a database" * 100)
    with pytest.raises(TunelabError, match="image.png: not a dataset index"):
        DatasetIndex(tmp_path / "image.png")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '0');")
    other.commit()
    other.close()
    with pytest.raises(TunelabError, match="schema 0, expected 1"):
        DatasetIndex.open_existing(tmp_path / "other.sqlite")


def test_a_reader_sees_committed_batches_while_a_writer_is_open(tmp_path):
    path = tmp_path / "i.sqlite"
    with DatasetIndex(path) as writer:
        writer.write_items(_items(10))
        with DatasetIndex.open_existing(path) as reader:  # read-only, WAL: no lock conflict with the writer
            before = reader.count(split=None, status=None)
            writer.write_items(_items(20), batch_rows=5)
            assert (before, reader.count(split=None, status=None)) == (10, 20)
