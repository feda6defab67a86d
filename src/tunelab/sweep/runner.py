"""Run a sweep: train the variants one after another, then measure them side by side.

Never lose work: a variant whose final checkpoint exists is not trained again; one with a saved training state
resumes from it; one that fails (bad value found at build time, NaN stop, out of memory) is recorded as failed with
its reason and the others still run. sweep.json is rewritten after every change.

Then, into the sweep's output folder: validation.json (base + every finished variant, when the base config has a
[validation] table), grid/ (when SWEEP.toml has a [grid]), score/ (scoreboard.json and judged images, when it has a
[score]; models already scored are reused), report.html."""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.errors import TunelabError, fail
from tunelab.signals import Interrupted
from tunelab.sweep.config import Sweep, Variant
from tunelab.sweep.record import SweepRecord
from tunelab.train.checkpoint import checkpoint_dir, find_checkpoint
from tunelab.train.config import RunConfig


@dataclass
class SweepResult:
    record: SweepRecord
    validation: dict | None = None  # validate_checkpoints' results: models[0] = base, then the finished variants
    grids: list[Path] = field(default_factory=list)
    scoreboard: dict | None = None  # `tunelab score` of base + finished variants, when SWEEP.toml has [score]
    report: Path | None = None


def final_step(config: RunConfig) -> int:
    """The step of the run's last checkpoint (with `epochs`, counted from the dataset index)."""
    if config.train.max_steps is not None:
        return config.train.max_steps
    from tunelab.train.recipe import data_batches, total_steps

    return total_steps(config, data_batches(config))


def resume_point(config: RunConfig) -> Path | None:
    """The run's latest checkpoint with training state, if any."""
    try:
        return find_checkpoint(config.train.output_dir, "latest")
    except TunelabError:
        return None


def with_current_defaults(recorded: dict) -> dict:
    """A run's recorded config as this version reads it: a key added since (with its default) is no difference;
    one this version no longer knows is left in place and shows as one."""
    try:
        return json.loads(json.dumps(RunConfig.model_validate(recorded).model_dump(mode="json")))
    except ValueError:  # pydantic's ValidationError: compare what was recorded
        return recorded


def first_difference(old, new, key: str = "") -> str | None:
    """The first dotted key whose value differs between two JSON-like trees (None: equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    return None if old == new else (key or "<root>")


def config_conflict(config: RunConfig) -> str | None:
    """Why the run already in the variant's folder is not this variant's run (None: it is, or there is none)."""
    run_json = Path(config.train.output_dir) / "run.json"
    if not run_json.exists():
        return None
    try:
        earlier = json.loads(run_json.read_text(encoding="utf-8"))["config"]
    except (ValueError, KeyError, TypeError):
        return f"{run_json}: unreadable; remove it or the folder to train this variant"
    difference = first_difference(with_current_defaults(earlier), json.loads(json.dumps(config.model_dump(mode="json"))))
    if difference:
        return (f"{config.train.output_dir} holds a run with another {difference}; "
                "remove the folder or rename the variant")
    return None


def check_data_prepared(sweep: Sweep) -> None:
    """Every variant reads a prepared dataset index: say so once, before anything trains."""
    for variant in sweep.variants:
        data = variant.config.data
        if data is not None and hasattr(data, "index") and not Path(data.index).exists():
            raise fail(sweep.path, f"variant {variant.name}: dataset index {data.index} not found "
                                   f"(run `tunelab prepare {sweep.base_path}` first)")


def last_smoothed_loss(output_dir: Path) -> float | None:
    if not any((output_dir / "tensorboard").glob("events.out.tfevents.*")):
        return None
    from tunelab.report.training_curves import read_run_curves

    return read_run_curves(output_dir).last("loss/smoothed")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, TunelabError) else f"{type(error).__name__}: {text}"


def train_variant(variant: Variant, record: SweepRecord, position: str) -> None:
    """Train (or skip, or resume) one variant; its outcome goes into `record`. Only Ctrl-C escapes."""
    from tunelab.train.recipe import run_training

    config, name = variant.config, variant.name
    entry = record.variants[name]
    try:
        conflict = config_conflict(config)
        if conflict:
            raise TunelabError(conflict)
        final = checkpoint_dir(config.train.output_dir, final_step(config))
        if final.exists():
            loss = last_smoothed_loss(variant.output_dir)
            record.update(name, status="done", reason="already finished", final_checkpoint=str(final),
                          last_smoothed_loss=entry.last_smoothed_loss if loss is None else loss)
            print(f"{position} {name}: done (already finished: {final})", flush=True)
            return
        resume = resume_point(config)
        how = f"resumed from {resume.name}" if resume else "trained"
        settings = ", ".join(f"{k}={v}" for k, v in variant.overrides.items()) or "the base config"
        print(f"{position} {name}: {'resuming' if resume else 'training'} ({settings})", flush=True)
        record.update(name, status="running", reason=how)
        started = time.perf_counter()
        try:
            run = run_training(config, resume="latest" if resume else None)
        finally:
            entry.wall_s = round(entry.wall_s + time.perf_counter() - started, 1)
        loss = last_smoothed_loss(variant.output_dir)
        record.update(name, status="done", final_checkpoint=str(final),
                      last_smoothed_loss=loss if loss is not None else run.logger.smoothed)
        del run
        print(f"{position} {name}: done in {entry.wall_s:.1f} s", flush=True)
    except KeyboardInterrupt:
        record.update(name, status="interrupted", reason="interrupted (Ctrl-C); a re-run resumes it")
        raise
    except Interrupted as stop:  # SIGINT / SIGTERM (tunelab.signals): the variant checkpointed where it stopped
        record.update(name, status="interrupted", reason=f"{stop}; a re-run of the sweep resumes it")
        saved = f" at step {stop.step}; checkpoint saved" if stop.step is not None else ""
        raise Interrupted(stop.signum, f"sweep interrupted in {name}{saved}; run the same sweep again to resume") \
            from None
    except Exception as error:  # noqa: BLE001 - one variant's failure must not cost the others
        if not isinstance(error, TunelabError):
            traceback.print_exc(file=sys.stderr)
        record.update(name, status="failed", reason=one_line(error))
        print(f"{position} {name}: FAILED: {one_line(error)}", flush=True)
    finally:
        free_memory()


def validate_sweep(sweep: Sweep, record: SweepRecord, progress: bool) -> dict | None:
    if sweep.base.validation is None:
        return None
    from tunelab.validate.run import validate_checkpoints

    finished = [Path(v.final_checkpoint) for v in record.finished()]
    print(f"validation: base + {len(finished)} variants", flush=True)
    return validate_checkpoints(sweep.base_path, finished, output=sweep.output_dir / "validation.json",
                                progress=progress)


def run_sweep(sweep: Sweep, *, progress: bool = True) -> SweepResult:
    """Train every variant, then validate, grid and report what finished."""
    check_data_prepared(sweep)
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    record = SweepRecord.start(sweep)
    record.write()
    count = len(sweep.variants)
    for i, variant in enumerate(sweep.variants, 1):
        train_variant(variant, record, f"[{i}/{count}]")
    result = SweepResult(record)
    if not record.finished():
        print("no variant finished: nothing to validate or grid", flush=True)
    else:
        result.validation = validate_sweep(sweep, record, progress)
        if sweep.config.grid is not None:
            from tunelab.sweep.grid import render_sweep_grid

            print("grid: base + finished variants as columns", flush=True)
            result.grids = render_sweep_grid(sweep, record, progress=progress)
        free_memory()
        if sweep.config.score is not None:
            from tunelab.sweep.scoring import score_sweep

            result.scoreboard = score_sweep(sweep, record, progress=progress)
            free_memory()
    try:
        from tunelab.report.build import write_report

        result.report = write_report(sweep.output_dir)
    except TunelabError as error:  # e.g. nothing to report: every variant failed before logging
        print(f"report: not written ({one_line(error)})", flush=True)
    return result
