"""What the live page shows of one watched folder, built from its files on each page load: the runs in it (the
folder itself, or its run sub-folders: a sweep's variants, a demo's runs) with state, progress, curves, loss trend,
latest samples and checkpoints; the sweep's record; scoreboards, findings, validation tables and grids.

Reading is guarded section by section: a folder that vanished, a file half-written or unreadable shows as a line
saying so, and the rest of the page stays. Plots and parsed files are cached on the files' (size, mtime), so many
page loads cost one read and one plot per change."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from tunelab.report.build import trend_section, validation_section
from tunelab.report.gallery import grid_views
from tunelab.report.inputs import FindingsRecord, GridRecord, Scoreboard, ValidationResults, read_json_record
from tunelab.report.tables import per_seed_table, scoreboard_table
from tunelab.report.training_curves import read_run_curves
from tunelab.train.run_status import STATUS_FILE
from tunelab.watch.run_state import format_duration, read_run_state

RUN_MARKERS = (STATUS_FILE, "run.json", "tensorboard", "checkpoints")
SAMPLES_SHOWN = 16  # images of the latest sampling step


class FileCache:
    """Values computed from files, recomputed when any of those files changes (size or mtime) or appears/vanishes,
    but not more often than `STALE_FACTOR` times the last computation took: a multi-day run's event file grows every
    few seconds and takes seconds to read, and the page must not spend all its time re-reading it.
    One computation at a time: plotting is not thread-safe, and 50 page loads at once must not plot 50 times."""

    STALE_FACTOR = 5

    def __init__(self, limit: int = 256):
        self.entries: dict[tuple, tuple[tuple, object, float]] = {}  # key → (signature, value, recompute after)
        self.lock = threading.Lock()
        self.limit = limit

    @staticmethod
    def signature(paths: list[Path]) -> tuple:
        marks = []
        for path in paths:
            try:
                stat = path.stat()
                marks.append((str(path), stat.st_size, stat.st_mtime_ns))
            except OSError:
                marks.append((str(path), None, None))
        return tuple(marks)

    def get(self, key: tuple, paths: list[Path], compute: Callable[[], object]):
        with self.lock:
            signature = self.signature(paths)
            cached = self.entries.get(key)
            if cached is not None and (cached[0] == signature or time.monotonic() < cached[2]):
                return cached[1]
            start = time.monotonic()
            value = compute()
            took = time.monotonic() - start
            if len(self.entries) >= self.limit:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = (signature, value, start + took * (1 + self.STALE_FACTOR))
            return value


def guarded(label: str, build: Callable[[], object]) -> dict:
    """{"value": ..., "error": None} or {"value": None, "error": one line}: a file being rewritten, removed or
    malformed never breaks the page."""
    try:
        return {"value": build(), "error": None}
    except Exception as e:  # noqa: BLE001 — any reading problem is shown on the page, never raised to the server
        lines = str(e).strip().splitlines()
        return {"value": None, "error": f"{label}: {lines[0] if lines else type(e).__name__}"}


def is_run(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in RUN_MARKERS)


def sub_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def run_folders(root: Path) -> list[Path]:
    """The root when it is a run, else its run sub-folders (a sweep's variants, a demo's runs)."""
    return [root] if is_run(root) else [p for p in sub_folders(root) if is_run(p)]


class FolderView:
    """Builds the page context of watched folder number `index`; file URLs are /files/<index>/<path in folder>."""

    def __init__(self, index: int, root: Path, cache: FileCache, trend_window: int | None):
        self.index, self.root, self.cache, self.trend_window = index, root, cache, trend_window

    def url(self, path: Path) -> str:
        return f"/files/{self.index}/" + quote(path.relative_to(self.root).as_posix())

    def context(self) -> dict:
        root = self.root
        base = {"index": self.index, "name": root.name or str(root), "path": str(root)}
        if not root.is_dir():
            return {**base, "gone": f"{root} is not there (deleted or moved?): nothing to show; the page keeps "
                                    "checking and shows it again when it is back"}
        runs = guarded("runs", lambda: run_folders(root))
        return {**base, "gone": None,
                "runs": [self.run(run) for run in runs["value"] or []], "runs_error": runs["error"],
                "sweep": guarded("sweep.json", self.sweep) if (root / "sweep.json").exists() else None,
                "results": guarded("results", self.results)}

    def run(self, run: Path) -> dict:
        state = guarded(STATUS_FILE, lambda: read_run_state(run))
        state_value = state["value"]
        progress = None
        if state_value is not None:
            progress = {"step": state_value.step, "total": state_value.total_steps, "fraction": state_value.fraction,
                        "images_per_s": state_value.images_per_s,
                        "eta": format_duration(state_value.eta_s) if state_value.eta_s is not None else None}
        return {"name": run.name, "path": str(run), "state": state_value.state if state_value else "unknown",
                "reason": state_value.reason if state_value else state["error"], "progress": progress,
                "curves": guarded("tensorboard", lambda: self.curves(run)),
                "samples": guarded("samples", lambda: self.samples(run)),
                "checkpoints": guarded("checkpoints", lambda: self.checkpoints(run))}

    def curves(self, run: Path) -> dict | None:
        events = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
        if not events:
            return None

        def build():
            curves = read_run_curves(run)
            return trend_section(curves, self.trend_window) if curves.scalars else None
        return self.cache.get(("curves", str(run), self.trend_window), events, build)

    def samples(self, run: Path) -> dict | None:
        steps = sorted(p for p in (run / "samples").glob("step-*") if p.is_dir())
        if not steps:
            return None
        latest = steps[-1]
        inside = self.root.resolve()
        images = [p for p in sorted(latest.glob("*.png")) if p.resolve().is_relative_to(inside)][:SAMPLES_SHOWN]
        return {"step": latest.name, "count": len(steps), "images": [{"src": self.url(p), "name": p.name}
                                                                     for p in images]}

    def checkpoints(self, run: Path) -> dict:
        folder = run / "checkpoints"
        done = sorted(p.name for p in folder.glob("step-*") if p.is_dir())
        writing = sorted(p.name[1:-4] for p in folder.glob(".step-*.tmp"))
        return {"done": done, "writing": writing}

    def sweep(self) -> dict:
        record = json.loads((self.root / "sweep.json").read_text(encoding="utf-8"))
        return {"variants": [{k: v.get(k) for k in ("name", "status", "reason", "wall_s", "last_smoothed_loss")}
                             for v in record["variants"]]}

    def results(self) -> dict:
        """Scoreboards (with verdicts), findings, validation tables and grids in the folder or one level down."""
        places = [self.root] + sub_folders(self.root)
        out = {"scoreboards": [], "findings": [], "validations": [], "grids": [], "errors": []}
        for place in places:
            for name, build in (("scoreboard.json", self.scoreboard), ("findings.json", self.findings),
                                ("validation.json", self.validation), ("grid.json", self.grid)):
                path = place / name
                if path.is_file():
                    section = guarded(str(path.relative_to(self.root)),
                                      lambda: self.cache.get((name, str(path)), [path], lambda: build(path)))
                    if section["error"]:
                        out["errors"].append(section["error"])
                    else:
                        key = {"scoreboard.json": "scoreboards", "findings.json": "findings",
                               "validation.json": "validations", "grid.json": "grids"}[name]
                        out[key] += section["value"] if name == "grid.json" else [section["value"]]
        return out

    def scoreboard(self, path: Path) -> dict:
        board = read_json_record(path, Scoreboard)
        return {"source": str(path.relative_to(self.root)), "table": scoreboard_table(board),
                "per_seed": per_seed_table(board), "judge": board.judge}

    def findings(self, path: Path) -> dict:
        return {"source": str(path.relative_to(self.root)), "rows": read_json_record(path, FindingsRecord).findings}

    def validation(self, path: Path) -> dict:
        return validation_section(path, read_json_record(path, ValidationResults), self.root)

    def grid(self, path: Path) -> list:
        views = grid_views(path.parent, read_json_record(path, GridRecord), self.root)
        prefix = f"/files/{self.index}/"
        for view in views:  # relative to the folder → served under /files/<index>/
            view.image = prefix + view.image if view.image else None
            for row in view.cells:
                for cell in row:
                    cell.src = prefix + cell.src if cell.src else None
        return views
