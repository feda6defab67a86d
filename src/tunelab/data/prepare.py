"""The prepare stage: sources → checked images → buckets and split → the SQLite index, plus a skip report.

Incremental: a file whose path, size and mtime match its row (and whose image checks did not change) is not read
again; rows are committed in batches, so an interrupted run resumes where it stopped. Every other image is read once: hashed and fully decoded. Nothing raises for a bad image or caption: the
item is written with `status = "skipped"` and a reason, and listed in the report next to the index."""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from tunelab.atomic import atomic_path, write_json
from tunelab.data.buckets import assign_bucket
from tunelab.data.config import DataConfig, FolderSource, ImageChecks, SplitConfig
from tunelab.data.images import ImageFacts, ImageSkip, inspect_image
from tunelab.data.index import OK, SKIPPED, TRAIN, VALIDATION, DatasetIndex, IndexItem, Subset
from tunelab.data.sources import Candidate, iter_candidates
from tunelab.errors import fail
from tunelab.errors import TunelabError

# Reasons decided by the image file itself (kept on an unchanged file without reading it again).
IMAGE_SKIP_REASONS = {"empty_file", "too_many_pixels", "too_small", "animated", "not_an_image", "truncated", "corrupt"}
TEXT_NOTES = {"no_caption", "empty_caption"}  # recomputed from the sidecars on every run


@dataclass
class PrepareStats:
    items: int = 0  # candidates seen this run
    images_read: int = 0  # image files read and decoded this run
    unchanged: int = 0  # files reused from the index without reading
    ok: int = 0
    skipped: int = 0
    removed: int = 0  # rows dropped because their file is gone
    train: int = 0
    validation: int = 0
    seconds: float = 0.0
    skip_counts: dict[str, int] = field(default_factory=dict)
    duplicate_groups: list[list[str]] = field(default_factory=list)  # usable items with identical content
    note_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        skips = ", ".join(f"{r} {n}" for r, n in self.skip_counts.items()) or "none"
        copies = sum(len(g) - 1 for g in self.duplicate_groups)
        return (
            f"{self.ok} items indexed ({self.train} train, {self.validation} validation), {self.skipped} skipped "
            f"({skips}); {copies} duplicate copies; {self.images_read} images read, {self.unchanged} unchanged, "
            f"{self.removed} removed; {self.seconds:.1f} s"
        )


def split_of(path: str | Path, content_hash: str, config: SplitConfig) -> str:
    """Validation if under the validation folder, or if the salted content hash falls below the fraction.
    By content (not path or order): the same image is held out on every machine, and duplicates never straddle."""
    if config.validation_folder is not None and Path(path).is_relative_to(config.validation_folder):
        return VALIDATION
    if config.validation_fraction > 0:
        digest = hashlib.blake2b(f"{config.salt}:{content_hash}".encode(), digest_size=8).digest()
        if int.from_bytes(digest, "big") / 2**64 < config.validation_fraction:
            return VALIDATION
    return TRAIN


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass(frozen=True, slots=True)
class _NeedsRead:
    """A candidate whose image must be read; `base` holds the row fields known without reading it."""

    candidate: Candidate
    base: dict


class _ItemBuilder:
    """Turns candidates (and their previous rows) into the rows to write; reads only the images that changed,
    in a process pool when `workers` > 1; counts what it did."""

    def __init__(self, config: DataConfig, stats: PrepareStats, pool: Executor | None):
        self.config, self.stats, self.pool = config, stats, pool
        self.checks = config.image_checks()
        self.subset_ids: dict[str, int] = {}
        self.notes: Counter[str] = Counter()

    def checks_for(self, candidate: Candidate) -> ImageChecks:
        """The run's checks, with the default minimum side taken from the buckets this candidate lands in."""
        return self.checks if candidate.buckets is None else self.config.image_checks(candidate.buckets)

    def build_batch(self, batch: list[Candidate], previous: dict[str, IndexItem]) -> list[IndexItem]:
        planned = [self._plan(c, previous.get(str(c.path))) for c in batch]
        to_read = [p for p in planned if isinstance(p, _NeedsRead)]
        paths = [p.candidate.path for p in to_read]
        checks = [self.checks_for(p.candidate) for p in to_read]
        facts = iter(self.pool.map(inspect_image, paths, checks, chunksize=4) if self.pool else map(inspect_image, paths, checks))
        self.stats.images_read += len(to_read)
        return [self._finish(p, next(facts)) if isinstance(p, _NeedsRead) else p for p in planned]

    def _plan(self, candidate: Candidate, previous: IndexItem | None) -> IndexItem | _NeedsRead:
        self.stats.items += 1
        base = dict(path=str(candidate.path), subset_id=self.subset_ids[candidate.subset.name], tags=candidate.text.tags,
                    caption=candidate.text.caption, tag_categories=candidate.text.tag_categories)  # fmt: skip
        if candidate.skip_reason:
            return IndexItem(**base, status=SKIPPED, skip_reason=candidate.skip_reason)
        try:
            stat = candidate.path.stat()
        except OSError as e:
            return IndexItem(**base, status=SKIPPED, skip_reason="unreadable", note=e.strerror)
        base.update(file_size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        if candidate.text.skip_reason:  # decided before touching the image
            return IndexItem(**base, status=SKIPPED, skip_reason=candidate.text.skip_reason)
        if self.checks.require_caption and not (candidate.text.tags or candidate.text.caption):
            return IndexItem(**base, status=SKIPPED, skip_reason="no_caption")
        if not self._unchanged(previous, stat) or self._size_verdict_changed(candidate, previous):
            return _NeedsRead(candidate, base)
        self.stats.unchanged += 1
        if previous.status == SKIPPED:
            return IndexItem(**base, content_hash=previous.content_hash, status=SKIPPED,
                             skip_reason=previous.skip_reason, note=previous.note)  # fmt: skip
        image_notes = tuple(n for n in (previous.note or "").split("; ") if n and n not in TEXT_NOTES)
        return self._accept(candidate, base, previous.width, previous.height, previous.content_hash, image_notes)

    def _finish(self, planned: _NeedsRead, facts: ImageFacts | ImageSkip) -> IndexItem:
        if isinstance(facts, ImageSkip):
            return IndexItem(**planned.base, content_hash=facts.content_hash, status=SKIPPED, skip_reason=facts.reason,
                             note=facts.detail or None)  # fmt: skip
        return self._accept(planned.candidate, planned.base, facts.width, facts.height, facts.content_hash, facts.notes)

    def _accept(self, candidate: Candidate, base: dict, width: int, height: int, content_hash: str, image_notes) -> IndexItem:
        notes = tuple(dict.fromkeys(tuple(image_notes) + candidate.text.notes))
        self.notes.update(notes)
        placement = assign_bucket(width, height, candidate.buckets or self.config.buckets)
        return IndexItem(
            **base, content_hash=content_hash, width=width, height=height,
            bucket_width=placement.bucket_width, bucket_height=placement.bucket_height,
            resize_width=placement.resize_width, resize_height=placement.resize_height,
            crop_left=placement.crop_left, crop_top=placement.crop_top,
            split=split_of(candidate.path, content_hash, self.config.split), status=OK, note="; ".join(notes) or None,
        )  # fmt: skip

    def _size_verdict_changed(self, candidate: Candidate, previous: IndexItem) -> bool:
        """A source's own buckets (e.g. an sd-scripts dataset config's resolution) set its too-small limit, and can
        change while the run's checks do not: judge the image again when its old verdict may no longer hold."""
        if candidate.buckets is None:
            return False
        if previous.status == SKIPPED:
            return previous.skip_reason == "too_small"
        return min(previous.width, previous.height) < (self.checks_for(candidate).min_side or 0)

    def _unchanged(self, previous: IndexItem | None, stat) -> bool:
        return (
            previous is not None
            and previous.content_hash is not None
            and previous.file_size == stat.st_size
            and previous.mtime_ns == stat.st_mtime_ns
            and (previous.status == OK or previous.skip_reason in IMAGE_SKIP_REASONS)
        )


def _with_validation_folder(config: DataConfig) -> list:
    """The explicit validation folder is indexed even when no source lists it."""
    folder = config.split.validation_folder
    if folder is None or any(isinstance(s, FolderSource) and folder.is_relative_to(s.path) for s in config.sources):
        return list(config.sources)
    return [*config.sources, FolderSource(type="folder", path=folder)]


def check_source_folders(config: DataConfig, config_file: Path | None = None) -> None:
    """Every folder source exists, checked before the index is created (a first prepare that failed on a missing
    folder left an empty index behind); the error names the config file and key."""
    for i, source in enumerate(_with_validation_folder(config)):
        if isinstance(source, FolderSource) and not Path(source.path).is_dir():
            key = f"[data] sources[{i}].path" if i < len(config.sources) else "[data.split] validation_folder"
            raise fail(config_file or source.path, f"{key}: image folder {source.path} not found")


def prepare_dataset(config: DataConfig, *, progress: bool = True, config_file: Path | None = None) -> PrepareStats:
    """Build or update the index at `config.index` (paths in `config` must be absolute: `DataConfig.resolved`)."""
    check_source_folders(config, config_file)
    started = time.perf_counter()
    stats = PrepareStats()
    workers = config.workers or os.cpu_count() or 1
    with DatasetIndex(config.index) as index, (ProcessPoolExecutor(workers) if workers > 1 else nullcontext()) as pool:
        run = int(index.get_meta("last_run", 0)) + 1
        checks = config.image_checks().model_dump(mode="json")
        if index.get_meta("image_checks") != checks:  # every image must pass the new checks: forget old verdicts
            index.forget_image_hashes()
            index.set_meta("image_checks", checks)  # now, so that an interrupted run resumes where it stopped
        builder = _ItemBuilder(config, stats, pool=pool)

        def rows() -> Iterator[IndexItem]:
            candidates = tqdm(iter_candidates(_with_validation_folder(config)), unit="img", desc="prepare", disable=not progress)
            for batch in _batched(candidates, config.batch_rows):
                for spec in {c.subset.name: c.subset for c in batch}.values():
                    _register_subset(index, spec, builder.subset_ids)
                yield from builder.build_batch(batch, index.find_by_paths([str(c.path) for c in batch]))

        index.write_items(rows(), seen_run=run, batch_rows=config.batch_rows)
        stats.removed = index.delete_unseen(run)
        index.set_meta("last_run", run)
        index.set_meta("data_config", config.model_dump(mode="json"))

        stats.ok, stats.skipped = index.count(None), index.count(None, status=SKIPPED)
        stats.train, stats.validation = index.count(TRAIN), index.count(VALIDATION)
        stats.skip_counts = index.skip_counts()
        stats.duplicate_groups = index.duplicate_groups()
        stats.note_counts = dict(builder.notes.most_common())
        stats.seconds = time.perf_counter() - started
        write_skip_report(index, stats)
    return stats


def _register_subset(index: DatasetIndex, spec: Subset, subset_ids: dict[str, int]) -> None:
    if spec.name not in subset_ids:
        subset_ids[spec.name] = index.upsert_subset(spec.name, repeats=spec.repeats, is_reg=spec.is_reg,
                                                    caption_options=spec.caption_options)  # fmt: skip


def require_train_items(stats: PrepareStats, index_path: Path) -> None:
    """An index with nothing to train on is an error (exit 2), with the skip counts and the most common reason."""
    if stats.train > 0:
        return
    skips = ", ".join(f"{reason} {n}" for reason, n in stats.skip_counts.items()) or "none"
    common = ""
    if stats.skip_counts:
        reason, count = next(iter(stats.skip_counts.items()))
        with DatasetIndex.open_existing(index_path) as index:
            example = next((it for it in index.iter_items(split=None, status=SKIPPED) if it.skip_reason == reason), None)
        note = " ".join((example.note or "").split()) if example is not None else ""
        detail = f", e.g. {Path(example.path).name}: {note[:80]}" if note else ""
        common = f"; most common: {reason} ({count} of {stats.skipped}{detail})"
    raise TunelabError(f"{index_path}: 0 train items ({stats.validation} validation, {stats.skipped} skipped: {skips})"
                       f"{common}; skip report: {report_paths(index_path)[1]}")


def report_paths(index_path: Path) -> tuple[Path, Path]:
    """The skip report next to the index: `<index>.skips.json` (counts + items) and `<index>.skips.txt`."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".skips.json"), index_path.with_name(index_path.name + ".skips.txt")


def write_skip_report(index: DatasetIndex, stats: PrepareStats) -> None:
    """Counts by reason plus one line per skipped file (reason, path, detail), both written atomically."""
    json_path, text_path = report_paths(index.path)
    skipped = [(it.skip_reason, it.path, it.note or "") for it in index.iter_items(split=None, status=SKIPPED)]
    skipped.sort()
    write_json(json_path, {
        "summary": stats.summary(),
        "skip_counts": stats.skip_counts,
        "accepted_with_notes": stats.note_counts,
        "duplicate_groups": stats.duplicate_groups,
        "skipped": [{"reason": r, "path": p, "detail": d} for r, p, d in skipped],
    })  # fmt: skip
    with atomic_path(text_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(f"# {stats.summary()}\n")
        for reason, count in stats.skip_counts.items():
            out.write(f"# {reason}: {count}\n")
        for reason, path, detail in skipped:
            detail = " ".join(detail.split())  # one line per file, whatever the error text held
            out.write(f"{reason}\t{path}\t{detail}\n")
