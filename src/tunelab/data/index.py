"""The dataset index: one SQLite row per item (image file), written by `tunelab prepare`, read by every later stage.

Why SQLite and not one JSON dict (sd-scripts' `meta_lat.json`): a million items are ~200 MB on disk and nothing has
to be held in memory; readers pull one split/bucket at a time in id order through an index; writers append in
batched transactions; WAL mode lets a training run read while `prepare` writes.

Item ids are stable: re-running `prepare` keeps the id of every path it has seen before (upsert on `path`).

An image under the index's folder is stored by its path relative to that folder, so a dataset folder that holds its
index can be moved or copied and still reads its own images; an image elsewhere keeps its absolute path. Items read
back always carry absolute paths.
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tunelab.errors import fail

SCHEMA_VERSION = 1
TRAIN, VALIDATION = "train", "validation"
OK, SKIPPED = "ok", "skipped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subsets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    repeats INTEGER NOT NULL DEFAULT 1,
    is_reg INTEGER NOT NULL DEFAULT 0,
    caption_options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    subset_id INTEGER NOT NULL DEFAULT 0,
    file_size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    content_hash TEXT,
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    bucket_width INTEGER NOT NULL DEFAULT 0,
    bucket_height INTEGER NOT NULL DEFAULT 0,
    resize_width INTEGER NOT NULL DEFAULT 0,
    resize_height INTEGER NOT NULL DEFAULT 0,
    crop_left INTEGER NOT NULL DEFAULT 0,
    crop_top INTEGER NOT NULL DEFAULT 0,
    tags TEXT,
    caption TEXT,
    tag_categories TEXT,
    split TEXT NOT NULL DEFAULT 'train',
    status TEXT NOT NULL DEFAULT 'ok',
    skip_reason TEXT,
    note TEXT,
    seen_run INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_by_bucket ON items (status, split, bucket_width, bucket_height, id, subset_id);
"""
# subset_id in the bucket index: the loader plans an epoch from (id, subset) pairs read from the index alone; without
# it, every table page is read (12.4M booru items: ~5 GB, a minute per process).
_BUCKET_INDEX_COLUMNS = "bucket_height, id, subset_id)"


@dataclass(frozen=True, slots=True)
class Subset:
    """A group of items sharing repeat count, regularisation flag and caption options (an sd-scripts subset):
    `name` is stable (its folder or metadata file); `id` is its row in the index (0 until registered)."""

    name: str
    repeats: int = 1
    is_reg: bool = False
    caption_options: dict | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class IndexItem:
    """One row. Sizes are (width, height) in pixels after EXIF orientation; the bucket is the training size.

    SDXL conditioning from a row: original_size = (height, width), crop_top_left = (crop_top, crop_left),
    target_size = (bucket_height, bucket_width); the image is resized to (resize_width, resize_height), then cropped."""

    path: str
    id: int | None = None
    subset_id: int = 0
    file_size: int = 0
    mtime_ns: int = 0
    content_hash: str | None = None
    width: int = 0
    height: int = 0
    bucket_width: int = 0
    bucket_height: int = 0
    resize_width: int = 0
    resize_height: int = 0
    crop_left: int = 0
    crop_top: int = 0
    tags: str | None = None
    caption: str | None = None
    tag_categories: dict[str, list[str]] | None = None  # e.g. {"artist": [...], "character": [...]} when known
    split: str = TRAIN
    status: str = OK
    skip_reason: str | None = None
    note: str | None = None

    @property
    def bucket(self) -> tuple[int, int]:
        return (self.bucket_width, self.bucket_height)

    @property
    def original_size_hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def crop_top_left(self) -> tuple[int, int]:
        return (self.crop_top, self.crop_left)

    @property
    def target_size_hw(self) -> tuple[int, int]:
        return (self.bucket_height, self.bucket_width)


_COLUMNS = tuple(f.name for f in fields(IndexItem))
_WRITE_COLUMNS = tuple(c for c in _COLUMNS if c != "id")
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM items"
_CATEGORIES_AT = _COLUMNS.index("tag_categories")
_ID_AT = _COLUMNS.index("id")


def _row_to_item(row: tuple, root: str = "") -> IndexItem:
    """`root`: the index's folder, which a relative stored path is relative to."""
    if root and not os.path.isabs(row[0]):
        row = (os.path.join(root, row[0]),) + row[1:]
    if row[_CATEGORIES_AT] is not None:
        row = row[:_CATEGORIES_AT] + (json.loads(row[_CATEGORIES_AT]),) + row[_CATEGORIES_AT + 1 :]
    return IndexItem(*row)


_write_values = operator.attrgetter(*_WRITE_COLUMNS)
_CATEGORIES_WRITE_AT = _WRITE_COLUMNS.index("tag_categories")


def _item_to_row(item: IndexItem, seen_run: int, root: str = "") -> tuple:
    values = _write_values(item)
    if root:
        values = (stored_path(values[0], root),) + values[1:]
    if item.tag_categories is not None:
        at = _CATEGORIES_WRITE_AT
        values = values[:at] + (json.dumps(item.tag_categories, ensure_ascii=False),) + values[at + 1 :]
    return (*values, seen_run)


def stored_path(path: str, root: str) -> str:
    """How the index stores `path`: relative (with "/") when it lies under `root`, else as given."""
    if os.path.isabs(path) and os.path.commonpath([root, path]) == root:
        return Path(os.path.relpath(path, root)).as_posix()
    return path


class DatasetIndex:
    """Open with `DatasetIndex(path)` (creates the file) or `DatasetIndex.open_existing(path)`; use as a context
    manager or call `close()`. Reads return `IndexItem`s; by default only usable (`status == "ok"`) items."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        self.root = str(self.path.resolve().parent)  # stored relative paths are relative to it
        try:
            self.db = self._connect(readonly)
            found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise fail(self.path, f"not a dataset index ({e})") from None
        if found is None or found[0] != str(SCHEMA_VERSION):
            self.db.close()
            raise fail(self.path, f"dataset index schema {found and found[0]}, expected {SCHEMA_VERSION}: "
                                  "delete it and run `tunelab prepare` again")  # fmt: skip
        self.db.execute("PRAGMA cache_size=-16000")  # 16 MB page cache: bounded memory at any scale
        if not readonly:
            self._store_paths_relative()

    @classmethod
    def open_existing(cls, path: str | Path, *, readonly: bool = True) -> "DatasetIndex":
        if not Path(path).exists():
            raise fail(path, "dataset index not found (run `tunelab prepare` first)")
        return cls(path, readonly=readonly)

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            return sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        old = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'items_by_bucket'").fetchone()
        if old is not None and not old[0].replace(" ", "").endswith(_BUCKET_INDEX_COLUMNS.replace(" ", "")):
            db.execute("DROP INDEX items_by_bucket")  # an index written before subset_id was in it: built anew below
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.commit()
        return db

    def _store_paths_relative(self) -> None:
        """Indexes written before paths were stored relative: rewrite the absolute paths under the index's folder
        once, keeping every id (the caches are keyed by id)."""
        if self.get_meta("relative_paths"):
            return
        rows = self.db.execute("SELECT id, path FROM items").fetchall()
        with self.db:
            self.db.executemany("UPDATE items SET path = ? WHERE id = ?",
                                [(stored_path(p, self.root), i) for i, p in rows if stored_path(p, self.root) != p])
        self.set_meta("relative_paths", True)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "DatasetIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------------------------

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self.db.commit()

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def upsert_subset(self, name: str, *, repeats: int = 1, is_reg: bool = False, caption_options: dict | None = None) -> int:
        """Create or update the subset called `name`; returns its id (stable across runs)."""
        options = json.dumps(caption_options or {}, sort_keys=True)
        self.db.execute(
            "INSERT INTO subsets (name, repeats, is_reg, caption_options) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET repeats = excluded.repeats, is_reg = excluded.is_reg, "
            "caption_options = excluded.caption_options",
            (name, repeats, int(is_reg), options),
        )
        self.db.commit()
        return self.db.execute("SELECT id FROM subsets WHERE name = ?", (name,)).fetchone()[0]

    def write_items(self, items: Iterable[IndexItem], *, seen_run: int = 0, batch_rows: int = 1000) -> int:
        """Insert or update items keyed by path (an existing path keeps its id), one transaction per batch."""
        cols = ", ".join(_WRITE_COLUMNS) + ", seen_run"
        marks = ", ".join("?" * (len(_WRITE_COLUMNS) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in (*_WRITE_COLUMNS[1:], "seen_run"))
        sql = f"INSERT INTO items ({cols}) VALUES ({marks}) ON CONFLICT(path) DO UPDATE SET {updates}"
        written, batch = 0, []
        for item in items:
            batch.append(_item_to_row(item, seen_run, self.root))
            if len(batch) >= batch_rows:
                written += self._write_batch(sql, batch)
                batch = []
        if batch:
            written += self._write_batch(sql, batch)
        return written

    def _write_batch(self, sql: str, rows: list[tuple]) -> int:
        with self.db:  # one transaction
            self.db.executemany(sql, rows)
        return len(rows)

    def forget_image_hashes(self) -> None:
        """Clear every content hash, so the next prepare reads every image again (its checks changed)."""
        with self.db:
            self.db.execute("UPDATE items SET content_hash = NULL")

    def delete_unseen(self, seen_run: int) -> int:
        """Drop rows whose file was not seen by run `seen_run` (removed from disk or from the config)."""
        with self.db:
            return self.db.execute("DELETE FROM items WHERE seen_run != ?", (seen_run,)).rowcount

    # --- reading ---------------------------------------------------------------------------------------------

    def get(self, item_id: int) -> IndexItem:
        row = self.db.execute(_SELECT + " WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(item_id)
        return _row_to_item(row, self.root)

    def get_many(self, item_ids: Sequence[int]) -> list[IndexItem]:
        """Items for `item_ids`, in the order given (a loader's batch)."""
        found: dict[int, IndexItem] = {}
        for start in range(0, len(item_ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = list(item_ids[start : start + 500])
            sql = _SELECT + f" WHERE id IN ({', '.join('?' * len(chunk))})"
            for row in self.db.execute(sql, chunk):
                item = _row_to_item(row, self.root)
                found[item.id] = item
        missing = [i for i in item_ids if i not in found]
        if missing:
            raise KeyError(missing[:5])
        return [found[i] for i in item_ids]

    def find_by_paths(self, paths: Sequence[str]) -> dict[str, IndexItem]:
        """Existing rows for these paths (any status): the incremental re-run looks up one batch at a time."""
        found: dict[str, IndexItem] = {}
        for start in range(0, len(paths), 500):
            chunk = [stored_path(p, self.root) for p in paths[start : start + 500]]
            sql = _SELECT + f" WHERE path IN ({', '.join('?' * len(chunk))})"
            for row in self.db.execute(sql, chunk):
                item = _row_to_item(row, self.root)
                found[item.path] = item
        return found

    def _where(self, split: str | None, bucket: tuple[int, int] | None, status: str | None) -> tuple[str, list]:
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if split is not None:
            clauses.append("split = ?")
            params.append(split)
        if bucket is not None:
            clauses.append("bucket_width = ? AND bucket_height = ?")
            params.extend(bucket)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def iter_items(
        self,
        split: str | None = TRAIN,
        bucket: tuple[int, int] | None = None,
        *,
        status: str | None = OK,
        after_id: int = 0,
        chunk_rows: int = 1000,
    ) -> Iterator[IndexItem]:
        """Items in id order, read in chunks by keyset pagination (constant memory, no long-lived cursor).
        `split=None` / `status=None` mean any."""
        where, params = self._where(split, bucket, status)
        joiner = " AND " if where else " WHERE "
        # Per bucket, the (status, split, bucket, id) index seeks straight to the page. Without a bucket, walk the
        # table in id order and filter: the index would make SQLite sort all matches again for every page.
        table = " FROM items" if bucket is not None else " FROM items NOT INDEXED"
        sql = _SELECT.replace(" FROM items", table) + where + joiner + "id > ? ORDER BY id LIMIT ?"
        last = after_id
        while True:
            rows = self.db.execute(sql, (*params, last, chunk_rows)).fetchall()
            for row in rows:
                yield _row_to_item(row, self.root)
            if len(rows) < chunk_rows:
                return
            last = rows[-1][_ID_AT]

    def item_ids(self, split: str | None = TRAIN, bucket: tuple[int, int] | None = None, *, status: str | None = OK) -> list[int]:
        """Just the ids, in id order (what a bucket sampler shuffles); served from the covering index."""
        where, params = self._where(split, bucket, status)
        return [r[0] for r in self.db.execute("SELECT id FROM items" + where + " ORDER BY id", params)]

    def count(self, split: str | None = TRAIN, bucket: tuple[int, int] | None = None, *, status: str | None = OK) -> int:
        where, params = self._where(split, bucket, status)
        return self.db.execute("SELECT COUNT(*) FROM items" + where, params).fetchone()[0]

    def bucket_counts(self, split: str | None = TRAIN) -> dict[tuple[int, int], int]:
        """{(bucket_width, bucket_height): number of usable items}, sorted by bucket."""
        where, params = self._where(split, None, OK)
        sql = f"SELECT bucket_width, bucket_height, COUNT(*) FROM items{where} GROUP BY bucket_width, bucket_height ORDER BY 1, 2"
        return {(w, h): n for w, h, n in self.db.execute(sql, params)}

    def skip_counts(self) -> dict[str, int]:
        """{skip reason: number of skipped items}, most frequent first."""
        sql = "SELECT skip_reason, COUNT(*) FROM items WHERE status = ? GROUP BY skip_reason ORDER BY 2 DESC, 1"
        return {reason: n for reason, n in self.db.execute(sql, (SKIPPED,))}

    def duplicate_groups(self, limit: int = 1000) -> list[list[str]]:
        """Paths of usable items that share a content hash (the same image more than once), largest groups first.
        Not skipped: a copy may be deliberate (another subset, other repeats) — reported so users can decide."""
        sql = ("SELECT group_concat(path, char(10)) FROM items WHERE status = ? GROUP BY content_hash "
               "HAVING COUNT(*) > 1 ORDER BY COUNT(*) DESC, MIN(id) LIMIT ?")  # fmt: skip
        return [sorted(os.path.join(self.root, p) for p in paths.split("\n"))
                for (paths,) in self.db.execute(sql, (OK, limit))]

    def subsets(self) -> dict[int, Subset]:
        rows = self.db.execute("SELECT id, name, repeats, is_reg, caption_options FROM subsets ORDER BY id")
        return {r[0]: Subset(r[1], r[2], bool(r[3]), json.loads(r[4]), id=r[0]) for r in rows}
