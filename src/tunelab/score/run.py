"""`tunelab score`: sample every probe with the base and each checkpoint — the same seeds for every model, so they
are compared image for image — judge, and write `scoreboard.json` (what `tunelab report` reads) with every number's
95 % interval and each concept's verdict.

A checkpoint column is a *setting*; a setting trained with several training seeds is given once per seed under the
same name (`NAME=PATH` repeated), and its numbers are over seeds and images (score/intervals.py).

Layout of the output folder:

    scoreboard.json                     settings, concepts, estimates with intervals, verdicts, timings
    models/<setting>[/seed-K]/images/   the judged images (PNG with A1111 infotext)
    models/<setting>[/seed-K]/judged.json   per-image verdicts (kept: a re-run skips finished models)"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.score.judged import JudgedModel, load_finished, safe_name, sample_and_judge
from tunelab.score.judges.base import Judge
from tunelab.score.probes import Probes
from tunelab.score.summary import summarise

BASE = "base"


@dataclass(frozen=True)
class ModelRun:
    """One checkpoint to score: the setting (column) it belongs to and its training seed's index in it."""

    setting: str
    path: Path
    seed_index: int = 0
    seeds_in_setting: int = 1

    @property
    def folder_name(self) -> str:
        return model_folder_names(self.setting, self.seeds_in_setting)[self.seed_index]


def model_folder_names(setting: str, seeds: int) -> list[str]:
    """Under models/: one folder per setting, or one per training seed inside it."""
    name = safe_name(setting)
    return [name] if seeds == 1 else [f"{name}/seed-{k}" for k in range(seeds)]


def plan_runs(base: str | Path, checkpoints: list[tuple[str, str | Path]]) -> list[ModelRun]:
    """The base first, then each setting's checkpoints in the order given (a repeated name = another seed)."""
    by_setting: dict[str, list[Path]] = {BASE: [Path(base)]}
    for setting, path in checkpoints:
        if setting == BASE:
            raise TunelabError(f"{path}: the name 'base' is the base model's column; name this checkpoint otherwise")
        by_setting.setdefault(setting, []).append(Path(path))
    folders = {}
    runs = []
    for setting, paths in by_setting.items():
        for k, path in enumerate(paths):
            run = ModelRun(setting, path, k, len(paths))
            if run.folder_name in folders:
                raise TunelabError(f"settings {folders[run.folder_name]!r} and {setting!r} share the folder name "
                                   f"{run.folder_name!r}: rename one")
            folders[run.folder_name] = setting
            runs.append(run)
    return runs


def parse_checkpoint_arg(text: str) -> tuple[str, Path]:
    """`PATH` → (its model label, PATH); `NAME=PATH` → (NAME, PATH)."""
    from tunelab.models.io import model_label

    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        if not name.strip() or not path.strip():
            raise TunelabError(f"{text}: give a checkpoint as PATH or NAME=PATH")
        return name.strip(), Path(path.strip())
    return model_label(text), Path(text)


def score_models(probes: Probes, judge: Judge, runs: list[ModelRun], out: str | Path, *, batch_size: int = 16,
                 dtype: str | None = None, progress: bool = True, log=print) -> dict:
    """Score every run (reusing finished ones), then write and return the scoreboard."""
    out = Path(out)
    probes.check_judge(judge)
    for run in runs:
        if not run.path.exists():
            raise TunelabError(f"{run.path}: model not found")
    fingerprint = probes.fingerprint()
    judged: dict[str, list[JudgedModel]] = {}
    reused, fresh = [], []
    started = time.perf_counter()
    for run in runs:
        folder = out / "models" / run.folder_name
        result = load_finished(folder, fingerprint, judge, str(run.path))
        if result is None:
            log(f"scoring {run.setting}" + (f" (seed {run.seed_index + 1}/{run.seeds_in_setting})"
                                            if run.seeds_in_setting > 1 else "") + f": {run.path}")
            result = sample_and_judge(probes, judge, run.setting, run.path, folder, batch_size=batch_size,
                                      dtype=dtype, progress=progress)
            fresh.append(result)
        else:
            reused.append(run.folder_name)
        judged.setdefault(run.setting, []).append(result)
    if reused:
        log(f"reused {len(reused)} scored model(s) (same probes, judge and model): {', '.join(reused)}")
    board = summarise(probes, judged, base=BASE)
    board["judge"] = judge.name
    board["probes"] = str(probes.path)
    board["models"] = {setting: [r.path for r in results] for setting, results in judged.items()}
    board["timings_s"] = _timings(fresh, time.perf_counter() - started)
    board["reused"] = reused
    atomic.write_json(out / "scoreboard.json", board)
    return board


def _timings(fresh: list[JudgedModel], wall: float) -> dict[str, float]:
    """Seconds of this call: models reused from an earlier call are not in these sums."""
    parts = [r.seconds for r in fresh]
    total = {key: round(sum(p.get(key, 0.0) for p in parts), 2) for key in ("load_and_sample", "write_images", "judge")}
    total["images"] = sum(int(p.get("images", 0)) for p in parts)
    total["wall"] = round(wall, 2)
    return total
