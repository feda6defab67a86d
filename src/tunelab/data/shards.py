"""Per-item tensors stored in safetensors shards, with a SQLite catalogue: the storage under both caches.

Layout of a store folder:
    catalogue.sqlite           meta (fingerprint), shards (name, items, bytes, digest), entries (item_id → shard, key)
    shard-000001.safetensors   tensors named "<item_id>.<name>", e.g. "17.latents"

Why it survives interruption (the corrupt-cache problem of other trainers): a shard is serialised in memory,
written to a temp file and renamed (`tunelab.atomic`); only then are its catalogue rows committed, in one
transaction. A kill at any moment leaves either a complete, catalogued shard, a complete but uncatalogued one (an
orphan, deleted and recomputed on the next run), or a temp file (deleted). Each entry records the `key` it was
computed from (content hash + geometry, or the prompt), so a changed item is recomputed, never served stale.
`verify()` re-reads every shard and checks its size, digest and tensor names against the catalogue.

Several writers (processes on one or many machines sharing the folder): SQLite must not be written from several
machines at once, so only the main process writes the catalogue (`shared_store`). The others open it read-only
(immutable: no locks, nothing written) and write each finished shard with a "<shard>.pending.json" beside it, its
catalogue rows; the main process takes those in when every writer is done, and before the next build. Each writer
names its shards with its own tag ("shard-p3-000001.safetensors"), so no two writers ever pick the same name."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize

from tunelab.atomic import write_bytes
from tunelab.errors import fail

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, items INTEGER NOT NULL, bytes INTEGER NOT NULL,
                                   digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (item_id INTEGER PRIMARY KEY, shard TEXT NOT NULL, key TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_shard ON entries (shard);
"""
SHARD_GLOB = "shard-*.safetensors"
PENDING = ".pending.json"  # "<shard>.pending.json": a finished shard's catalogue rows, not yet catalogued


@dataclass(frozen=True)
class ShardProblem:
    shard: str
    problem: str

    def __str__(self) -> str:
        return f"{self.shard}: {self.problem}"


def digest_of(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class ShardStore:
    """Open with `ShardStore(folder, fingerprint)`; `fingerprint` (JSON-able) says what the tensors were computed
    with (which VAE, dtype, ...). A store built with another fingerprint is refused, not mixed."""

    def __init__(self, folder: str | Path, fingerprint: dict | None = None, *, create: bool = True,
                 writer: str = "", read_only: bool = False):  # fmt: skip
        """`writer`: a tag in this writer's shard names. `read_only`: the catalogue is opened immutable (never
        written, no locks); shards written go to the folder with a pending file (see the module docstring)."""
        self.folder = Path(folder)
        self.writer, self.read_only = writer, read_only
        catalogue = self.folder / "catalogue.sqlite"
        if (read_only or not create) and not catalogue.exists():
            raise fail(self.folder, "no cache here (run `tunelab cache` first)")
        self.folder.mkdir(parents=True, exist_ok=True)
        if read_only:
            self.db = sqlite3.connect(catalogue.resolve().as_uri() + "?immutable=1", uri=True)
        else:
            self.db = sqlite3.connect(catalogue)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        stored = self.db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        if fingerprint is not None:
            if stored is None and read_only:
                raise fail(self.folder, "cache catalogue has no fingerprint yet (the main process makes it)")
            if stored is None:
                with self.db:
                    self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (json.dumps(fingerprint, sort_keys=True),))
            elif json.loads(stored[0]) != fingerprint:
                raise fail(self.folder, f"cache was built with other settings ({_difference(json.loads(stored[0]), fingerprint)}); "
                                        "delete the folder or set [data.cache] dir to a new one")  # fmt: skip
        self.fingerprint = fingerprint if stored is None else json.loads(stored[0])
        self._open: OrderedDict[str, object] = OrderedDict()  # a few safe_open handles (mmap), least recent out
        self._last_number: int | None = None

    def close(self) -> None:
        self._open.clear()
        self.db.close()

    def __enter__(self) -> "ShardStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------------------------

    def remove_leftovers(self) -> list[str]:
        """Catalogue the finished shards other writers (or a killed run) left pending, then delete temp files of
        interrupted writes and shards that are neither catalogued nor pending; return the deleted names."""
        if self.read_only:
            return []  # the main process settles the folder
        self.adopt_pending()
        known = {r[0] for r in self.db.execute("SELECT name FROM shards")}
        removed = []
        for path in [*self.folder.glob(".shard-*.tmp"), *self.folder.glob(SHARD_GLOB)]:
            if path.name not in known:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return sorted(removed)

    def next_shard_name(self) -> str:
        """A name no catalogued shard and no file in the folder has (found once, then counted up), with this
        writer's tag: writers never need to agree on names."""
        prefix = f"shard-{self.writer}-" if self.writer else "shard-"
        if self._last_number is None:
            names = [r[0] for r in self.db.execute("SELECT name FROM shards")] + [p.name for p in self.folder.glob(SHARD_GLOB)]
            numbers = [n.removeprefix(prefix).removesuffix(".safetensors") for n in names if n.startswith(prefix)]
            self._last_number = max((int(n) for n in numbers if n.isdigit()), default=0)
        self._last_number += 1
        return f"{prefix}{self._last_number:06d}.safetensors"

    def write_shard(self, tensors: dict[int, dict[str, torch.Tensor]], keys: dict[int, str]) -> str:
        """Write one shard of {item_id: {name: tensor}} atomically, then catalogue it (replacing older entries),
        or, with a read-only catalogue, leave its rows in a pending file for the main process."""
        flat = {f"{item_id}.{name}": t.detach().cpu().contiguous() for item_id, named in tensors.items() for name, t in named.items()}
        data = serialize(flat, metadata={"items": json.dumps(sorted(tensors))})
        name = self.next_shard_name()
        write_bytes(self.folder / name, data)
        record = {"name": name, "items": len(tensors), "bytes": len(data), "digest": digest_of(data),
                  "fingerprint": self.fingerprint, "entries": [[item_id, keys[item_id]] for item_id in tensors]}  # fmt: skip
        if self.read_only:
            write_bytes(self.folder / (name + PENDING), json.dumps(record).encode())
        else:
            self._catalogue(record)
        return name

    def _catalogue(self, record: dict) -> None:
        name = record["name"]
        replaced = set(self._shards_of([item_id for item_id, _ in record["entries"]])) - {name}
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?)",
                            (name, record["items"], record["bytes"], record["digest"]))  # fmt: skip
            self.db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                                [(item_id, name, key) for item_id, key in record["entries"]])  # fmt: skip
        self._drop_if_unreferenced(replaced)

    def adopt_pending(self) -> list[str]:
        """Catalogue every finished shard that has a pending file; a pending file from other settings, or without
        its shard, is deleted. (The writers of one build hold disjoint items, and an earlier build's pending shards
        are taken in before the next build writes: no two pending shards hold the same item.)"""
        adopted = []
        for pending in sorted(self.folder.glob("shard-*" + PENDING)):
            shard = pending.with_name(pending.name.removesuffix(PENDING))
            try:
                record = json.loads(pending.read_text())
            except (OSError, ValueError):  # written atomically, so only a foreign file can be unreadable
                record = None
            if record is not None and shard.exists() and record.get("fingerprint") == self.fingerprint:
                self._catalogue(record)
                adopted.append(shard.name)
            pending.unlink(missing_ok=True)  # after the commit: a kill in between adopts it again, harmlessly
        return adopted

    def checkpoint(self) -> None:
        """Move the WAL into the main file, so read-only (immutable) openers see every commit."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _shards_of(self, item_ids: list[int]) -> list[str]:
        found = []
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            sql = f"SELECT DISTINCT shard FROM entries WHERE item_id IN ({', '.join('?' * len(chunk))})"
            found += [r[0] for r in self.db.execute(sql, chunk)]
        return found

    def _drop_if_unreferenced(self, shards: set[str]) -> None:
        """Shards whose every entry was replaced by a newer computation are deleted."""
        dead = [s for s in sorted(shards) if self.db.execute("SELECT 1 FROM entries WHERE shard = ? LIMIT 1", (s,)).fetchone() is None]
        if dead:
            with self.db:
                self.db.executemany("DELETE FROM shards WHERE name = ?", [(n,) for n in dead])
            for name in dead:
                self._open.pop(name, None)
                (self.folder / name).unlink(missing_ok=True)

    def drop_shards(self, names: Iterable[str]) -> int:
        """Forget shards (e.g. the corrupt ones `verify` found) so the next build recomputes their items."""
        names = list(names)
        with self.db:
            dropped = sum(self.db.execute("DELETE FROM entries WHERE shard = ?", (n,)).rowcount for n in names)
            self.db.executemany("DELETE FROM shards WHERE name = ?", [(n,) for n in names])
        for name in names:
            self._open.pop(name, None)
            (self.folder / name).unlink(missing_ok=True)
        return dropped

    # --- reading ---------------------------------------------------------------------------------------------

    def keys_of(self, item_ids: Sequence[int]) -> dict[int, str]:
        """{item_id: key} of the cached items among `item_ids`."""
        found = {}
        for start in range(0, len(item_ids), 500):
            chunk = list(item_ids[start : start + 500])
            sql = f"SELECT item_id, key FROM entries WHERE item_id IN ({', '.join('?' * len(chunk))})"
            found.update(self.db.execute(sql, chunk).fetchall())
        return found

    def read(self, item_ids: Sequence[int], names: Sequence[str], expected_keys: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """Tensors of these items, in order. Raises if an item is missing or was computed from another key."""
        located = {}
        for start in range(0, len(item_ids), 500):
            chunk = list(item_ids[start : start + 500])
            sql = f"SELECT item_id, shard, key FROM entries WHERE item_id IN ({', '.join('?' * len(chunk))})"
            located.update((i, (s, k)) for i, s, k in self.db.execute(sql, chunk))
        out = []
        for n, item_id in enumerate(item_ids):
            if item_id not in located:
                raise fail(self.folder, f"item {item_id} is not cached (run `tunelab cache` again)")
            shard, key = located[item_id]
            if expected_keys is not None and expected_keys[n] != key:
                raise fail(self.folder, f"item {item_id} changed since it was cached (run `tunelab cache` again)")
            handle = self._handle(shard)
            out.append({name: handle.get_tensor(f"{item_id}.{name}") for name in names})
        return out

    def _handle(self, shard: str):
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        handle = safe_open(str(self.folder / shard), framework="pt")
        self._open[shard] = handle
        if len(self._open) > 32:
            self._open.popitem(last=False)
        return handle

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def shard_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM shards ORDER BY name")]

    # --- checking --------------------------------------------------------------------------------------------

    def verify(self) -> list[ShardProblem]:
        """Every catalogued shard: present, the recorded size and digest, a readable header naming exactly its
        catalogued items. Also reports leftovers of interrupted writes. [] means the store is sound."""
        problems = []
        for name, items, size, digest in self.db.execute("SELECT name, items, bytes, digest FROM shards ORDER BY name").fetchall():
            path = self.folder / name
            if not path.exists():
                problems.append(ShardProblem(name, "missing"))
                continue
            data = path.read_bytes()
            if len(data) != size:
                problems.append(ShardProblem(name, f"truncated or resized: {len(data)} bytes, expected {size}"))
            elif digest_of(data) != digest:
                problems.append(ShardProblem(name, "content does not match its digest (corrupt)"))
            else:
                problem = self._check_names(name, items)
                if problem:
                    problems.append(ShardProblem(name, problem))
        known = set(self.shard_names())
        for path in sorted([*self.folder.glob(".shard-*.tmp"), *self.folder.glob(SHARD_GLOB)]):
            if path.name not in known and path.with_name(path.name + PENDING).exists():
                problems.append(ShardProblem(path.name, "finished but not catalogued yet (taken in by the next build)"))
            elif path.name not in known:
                problems.append(ShardProblem(path.name, "leftover of an interrupted write (not used; removed by the next build)"))
        return problems

    def _check_names(self, name: str, items: int) -> str | None:
        try:
            with safe_open(str(self.folder / name), framework="pt") as handle:
                stored = {int(k.split(".", 1)[0]) for k in handle.keys()}
        except Exception as e:  # safetensors raises its own error types for bad headers
            return f"unreadable header: {e}"
        catalogued = {r[0] for r in self.db.execute("SELECT item_id FROM entries WHERE shard = ?", (name,))}
        if not catalogued <= stored:
            return f"{len(catalogued - stored)} catalogued items missing from the file"
        if len(stored) != items:
            return f"holds {len(stored)} items, catalogue says {items}"
        return None


@dataclass(frozen=True)
class WorkShare:
    """This process's part of a job split between `world` processes: runs of consecutive work units go to the
    processes in turn. `barrier` waits for every process (a no-op for one)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def takes(self, position: int, run: int) -> bool:
        """Whether unit `position` (0-based, in the job's order) is this process's, in runs of `run` units."""
        return (position // run) % self.world == self.rank


WHOLE = WorkShare()


@contextmanager
def shared_store(folder: str | Path, fingerprint: dict, share: WorkShare = WHOLE) -> Iterator[ShardStore]:
    """The store as each of `share.world` writers uses it. One writer: the plain store. Several: the main process
    first takes in pending shards of earlier runs and clears leftovers; then every process writes its shards with a
    read-only catalogue; when all are done, the main process catalogues the new shards."""
    if share.world == 1:
        with ShardStore(folder, fingerprint) as store:
            yield store
        return
    if share.is_main:
        with ShardStore(folder, fingerprint) as store:
            store.remove_leftovers()
            store.checkpoint()
    share.barrier()
    with ShardStore(folder, fingerprint, writer=f"p{share.rank}", read_only=True) as store:
        yield store
    share.barrier()  # not reached by a process that raised: the launcher stops the others
    if share.is_main:
        with ShardStore(folder, fingerprint) as store:
            store.adopt_pending()
            store.checkpoint()
    share.barrier()  # the catalogue is complete for everyone who reads it next


def _difference(old: dict, new: dict) -> str:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(changed)
