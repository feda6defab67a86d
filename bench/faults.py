"""Kill -9 at seeded random points over the train, checkpoint, prune and cache phases, resume, and compare with runs
that were never interrupted (issue 14). Prints one row per kill and a summary table.

    .venv/bin/python bench/faults.py [--kills 12] [--seed 0] [--parallel 2]

Each kill is a real `tunelab` process (tests/faults/fault_run.py: the CLI with an audit-event or training-loss hook
that SIGKILLs it at the chosen moment) on the tiny SDXL and 12 toy-world images:

  train       inside the loss of a seeded micro-batch (steps 1-6)
  checkpoint  at a seeded file event (temp file created, written, synced, renamed) inside writing step 2, 4 or 6
  prune       at a seeded file deletion while keep_last = 1 deletes the previous checkpoint (after steps 4 and 6)
  cache       at a seeded file event while `tunelab cache` writes latent shards (12 items, 3 shards)

After each kill: no folder under a step name may be a partial checkpoint; then `tunelab train --resume latest` (or
a fresh start when the kill came before the first checkpoint) runs to the end and its final training state (trained
weights, optimizer, scheduler, data position) must equal the uninterrupted run's bit for bit; a killed cache build is
run again and every item's latents must equal the uninterrupted build's, with `cache --verify` passing."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "faults"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from fault_setup import (build_toy_data, copy_data, finish, launch, same_training_state,  # noqa: E402
                         save_tiny_model, write_run)

STEPS = 6
PHASES = ("train", "checkpoint", "prune", "cache")


def plan_kills(count: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """(phase, fault_run.py arguments with ROOT for the run's folder), phases in turn, points drawn by `seed`."""
    rng = random.Random(seed)
    kills = []
    for i in range(count):
        phase = PHASES[i % len(PHASES)]
        if phase == "train":
            fault = ("--kill-at-step", str(rng.randint(1, STEPS)))
        elif phase == "checkpoint":
            step = rng.choice((2, 4, 6))
            fault = ("--kill-at-write", f"ROOT/run/checkpoints/.step-{step:06d}.tmp:{rng.randint(1, 30)}")
        elif phase == "prune":
            fault = ("--kill-at-delete", f"ROOT/run/checkpoints:{rng.randint(1, 40)}")
        else:
            fault = ("--kill-at-write", f"ROOT/cache/latents:{rng.randint(1, 12)}")
        kills.append((phase, fault))
    return kills


def partial_checkpoints(checkpoints: Path, whole: set[str]) -> list[str]:
    return [p.name for p in checkpoints.glob("step-*") if files_under(p) != whole]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def one_kill(n: int, phase: str, fault: tuple[str, ...], work: Path, data: Path, model: Path, straight: Path) -> dict:
    root = work / f"kill-{n:02d}-{phase}"
    copy_data(data, root)
    if phase == "cache":
        shutil.rmtree(root / "cache")  # built again from nothing, killed part way
    config = str(write_run(root, model, steps=STEPS))
    command = ("cache", config, "--quiet") if phase == "cache" else ("train", config)
    code, output = finish(launch(root, *command, fault=tuple(a.replace("ROOT", str(root)) for a in fault)))
    landed = next((line.removeprefix("killed ") for line in output.splitlines() if line.startswith("killed ")), None)
    if landed and phase == "checkpoint":  # which checkpoint's temp folder the event was in
        landed = f"{Path(fault[1].rsplit(':', 1)[0]).name}: {landed}"
    row = {"n": n, "phase": phase, "killed": code == -signal.SIGKILL, "where": landed or f"not reached (exit {code})"}
    if phase == "cache":
        code, output = finish(launch(root, "cache", config, "--quiet"))
        verify_code, verify = finish(launch(root, "cache", config, "--verify"))
        row["partial"] = []
        row["resumed"] = code == 0 and verify_code == 0 and same_latents(root / "cache", data / "cache")
        row["detail"] = "" if row["resumed"] else (output + verify)[-400:]
        return row
    checkpoints = root / "run/checkpoints"
    row["partial"] = partial_checkpoints(checkpoints, files_under(straight)) if checkpoints.exists() else []
    has_state = checkpoints.exists() and any(checkpoints.glob("step-*/state/progress.json"))
    code, output = finish(launch(root, "train", config, "--resume", "latest") if has_state
                          else launch(root, "train", config, "--overwrite"))
    final = checkpoints / f"step-{STEPS:06d}"
    differs = same_training_state(straight, final) if code == 0 and final.exists() else ["did not finish"]
    row["resumed"] = not differs and not list(checkpoints.glob(".*"))
    row["detail"] = ", ".join(differs) + ("" if code == 0 else output[-400:])
    return row


def same_latents(cache: Path, reference: Path) -> bool:
    import torch

    from tunelab.data.cache import LatentCache
    from tunelab.data.index import DatasetIndex

    with DatasetIndex.open_existing(cache.parent / "index.sqlite") as index:
        items = list(index.iter_items(split=None))
    a, b = LatentCache(cache / "latents"), LatentCache(reference / "latents")
    try:
        return all(torch.equal(a.latents([it]), b.latents([it])) for it in items)
    finally:
        a.close()
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2, help="kills run side by side")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="tunelab-faults-"))
    started = time.perf_counter()
    model = save_tiny_model(work / "model")
    data = build_toy_data(work / "data", model)
    straight_root = copy_data(data, work / "straight")
    code, output = finish(launch(straight_root, "train", str(write_run(straight_root, model, steps=STEPS))))
    assert code == 0, output
    straight = straight_root / "run/checkpoints" / f"step-{STEPS:06d}"
    kills = plan_kills(args.kills, args.seed)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda k: one_kill(k[0], *k[1], work, data, model, straight), enumerate(kills, 1)))
    print(f"{'#':>3}  {'phase':<11}{'killed':<8}{'partial step folder':<21}{'resumed bit-identical':<23}where")
    for row in rows:
        print(f"{row['n']:>3}  {row['phase']:<11}{'yes' if row['killed'] else 'no':<8}"
              f"{', '.join(row['partial']) or 'none':<21}{'yes' if row['resumed'] else 'NO':<23}{row['where']}")
        if not row["resumed"]:
            print(f"       {row['detail']}")
    print()
    print(f"{'phase':<11}{'kills':>6}{'landed':>8}{'partial':>9}{'bit-identical':>15}")
    for phase in PHASES:
        mine = [r for r in rows if r["phase"] == phase]
        print(f"{phase:<11}{len(mine):>6}{sum(r['killed'] for r in mine):>8}{sum(bool(r['partial']) for r in mine):>9}"
              f"{sum(r['resumed'] for r in mine):>15}")
    total = Counter(killed=sum(r["killed"] for r in rows), resumed=sum(r["resumed"] for r in rows))
    partial = sum(bool(r["partial"]) for r in rows)
    print(f"{'all':<11}{len(rows):>6}{total['killed']:>8}{partial:>9}{total['resumed']:>15}")
    print(f"\n{time.perf_counter() - started:.0f} s, seed {args.seed}, work folder {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if total["resumed"] == len(rows) else 1)


if __name__ == "__main__":
    main()
