"""Sweep toy finetunes over text-encoder mode × UNet lr × text-encoder lr (× steps) and print the scoreboard.

Each run finetunes the shipped toy base on the toy finetune world (48 images, batch 16) through the real pipeline
(`toy_run_toml` → prepare → caches → `run_training`); every run is kept until the end, then the base and every
final checkpoint are scored together with the toy probes file (`score_toy_models`, the code of `tunelab score`):
per concept the pass rate, its paired change against the base with a 95 % interval, the verdict, and each target's
contamination (how often retain prompts and the empty prompt now draw it: if that rises with zorb, "learned" means
the model draws stars everywhere, not that it learned the tag).

A second small table: Δemb, how far the tag's token embeddings moved (L2 change / L2 norm, mean over its BPE tokens
and both encoders), and the training wall time of each run.

    .venv/bin/python bench/toy_sweep.py --runs on:1e-5:1e-5,on:1e-5:1e-4 [--steps 300] [--samples 16] [--seeds 2]

A run is `mode:unet_lr:te_lr[:steps]` (te_lr is ignored by mode off; unet_lr by mode only). With --seeds N each run
is trained with training seeds --seed … --seed+N-1, and the scoreboard's intervals cover the seed-to-seed spread.
With --work a re-run reuses what is there: a checkpoint trained from the same config is not trained again, a model
already scored with the same probes is not sampled again. One training process at a time, 1 thread by default
(the machine is shared)."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class SweepRun:
    mode: str
    unet_lr: float
    te_lr: float
    steps: int

    @property
    def label(self) -> str:
        return f"{self.mode}-u{self.unet_lr:g}-t{self.te_lr:g}-s{self.steps}"


def parse_runs(text: str, default_steps: int) -> list[SweepRun]:
    runs = []
    for spec in text.split(","):
        fields = spec.strip().split(":")
        if len(fields) not in (3, 4) or fields[0] not in ("off", "on", "only"):
            raise SystemExit(f"--runs: {spec!r}: expected mode:unet_lr:te_lr[:steps] with mode off|on|only")
        steps = int(fields[3]) if len(fields) == 4 else default_steps
        runs.append(SweepRun(fields[0], float(fields[1]), float(fields[2]), steps))
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise SystemExit(f"--runs: a run is given twice ({', '.join(twice)})")
    return runs


def token_rows(components, text: str) -> list[torch.Tensor]:
    """Per text encoder, the token-embedding rows of `text`'s BPE tokens (without BOS/EOS)."""
    rows = []
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
        ids = tokenizer(text).input_ids[1:-1]
        rows.append(encoder.get_input_embeddings().weight[ids].detach().clone())
    return rows


def embedding_shift(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    shifts = [((a - b).norm(dim=1) / b.norm(dim=1)).mean().item() for b, a in zip(before, after)]
    return sum(shifts) / len(shifts)


def train_or_reuse(config: Path, text: str, final: Path, stale_scores: Path) -> float | None:
    """Train the run `text` describes unless `final` was trained from this very config (a re-run with --work):
    training seconds, or None when reused. A retrained checkpoint's old scores (same path, new weights) are
    removed, or the scoring would reuse them."""
    from tunelab.train.config import load_run_config
    from tunelab.train.recipe import run_training

    if final.exists() and config.is_file() and config.read_text() == text:
        return None
    config.write_text(text)
    run = load_run_config(config)
    shutil.rmtree(run.train.output_dir, ignore_errors=True)  # this bench's own folder: an unfinished or other run
    shutil.rmtree(stale_scores, ignore_errors=True)
    started = time.perf_counter()
    run_training(run)
    return time.perf_counter() - started


def shift_table(rows: list[tuple[str, float, float | None]]) -> str:
    width = max(len("run (mode-unet lr-te lr-steps, seed)"), *(len(name) for name, _, _ in rows))
    lines = [f"{'run (mode-unet lr-te lr-steps, seed)':<{width}}{'Δemb':>8}{'train s':>9}"]
    for name, shift, seconds in rows:
        lines.append(f"{name:<{width}}{shift:8.3f}" + (f"{seconds:9.0f}" if seconds is not None else f"{'reused':>9}"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated mode:unet_lr:te_lr[:steps]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--samples", type=int, default=16, help="samples per probe prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0,
                        help="(first) training seed; sampling seeds are the probes file's, the same for every model")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per run: --seed, --seed+1, …")
    parser.add_argument("--captions", type=json.loads, default=None,
                        help="caption policy as JSON; default: the demo's (tunelab.demo.TOY_FINETUNE_CAPTIONS); "
                             "'{}': the captions as written")
    parser.add_argument("--no-base", action="store_true",
                        help="no effect: the base is the scoreboard's reference column (scored once per --work "
                             "folder, then reused)")
    parser.add_argument("--work", type=Path, help="working folder, kept (default: a temporary one)")
    args = parser.parse_args()
    runs = parse_runs(args.runs, args.steps)
    if args.samples < 2:  # checked before any training: the scoreboard's intervals need two images a concept
        raise SystemExit("--samples: at least 2 (a concept's interval needs two images)")
    if args.seeds < 1:
        raise SystemExit("--seeds: at least 1")
    torch.set_num_threads(args.threads)

    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.demo import TOY_FINETUNE_CAPTIONS, toy_run_toml
    from tunelab.models.io import load_model
    from tunelab.score.run import ModelRun
    from tunelab.score.table import format_scoreboard
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.concepts import UNKNOWN_TAG
    from tunelab.toy.evaluation import score_toy_models
    from tunelab.toy.world import write_dataset

    if args.no_base:
        print("--no-base has no effect: the base is the reference every change is measured against", flush=True)
    captions = TOY_FINETUNE_CAPTIONS if args.captions is None else args.captions
    seeds = list(range(args.seed, args.seed + args.seeds))
    base_rows = token_rows(load_model(TOY_BASE_DIR), UNKNOWN_TAG)
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.work or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        write_dataset(root / "images", "finetune", count=args.images, progress=False)
        checkpoints: dict[str, list[Path]] = {}
        shifts: list[tuple[str, float, float | None]] = []
        prepared: set[str] = set()
        for run in runs:
            for k, seed in enumerate(seeds):
                name = run.label if len(seeds) == 1 else f"{run.label}-seed{seed}"
                config = root / f"{name}.toml"
                text = toy_run_toml(base=TOY_BASE_DIR, mode=run.mode, name=name, seed=seed, steps=run.steps,
                                    batch_size=args.batch_size, learning_rate=run.unet_lr,
                                    text_encoder_learning_rate=run.te_lr, captions=captions)
                if run.mode not in prepared:  # the caches depend on the mode only (text embeddings where frozen)
                    data_config = root / f"prepare-{run.mode}.toml"
                    data_config.write_text(text)
                    prepare_dataset(load_data_config(data_config), progress=False)
                    build_caches(data_config, progress=False)
                    prepared.add(run.mode)
                final = root / f"run-{name}/checkpoints/step-{run.steps:06d}/model"
                stale = root / "score" / "models" / ModelRun(run.label, final, k, len(seeds)).folder_name
                seconds = train_or_reuse(config, text, final, stale)
                shift = embedding_shift(base_rows, token_rows(load_model(final), UNKNOWN_TAG))
                shifts.append((f"{run.label}, seed {seed}", shift, seconds))
                print(f"{name}: " + ("reused (trained from the same config)" if seconds is None
                                     else f"trained in {seconds:.0f} s"), flush=True)
                checkpoints.setdefault(run.label, []).append(final)
        print(f"scoring base + {sum(map(len, checkpoints.values()))} checkpoint(s), {args.samples} samples per "
              "probe prompt", flush=True)
        board = score_toy_models({"base": [TOY_BASE_DIR], **checkpoints}, root / "score",
                                 samples_per_prompt=args.samples, log=lambda line: print(line, flush=True))
    print(f"\n{args.images} images, batch {args.batch_size}, {args.samples} samples per probe prompt, "
          f"{args.threads} thread(s), training seed(s) {', '.join(map(str, seeds))}; "
          f"captions {json.dumps(dict(captions) or 'as written')}")
    print(format_scoreboard(board))
    print("\ntoken embeddings of the unseen tag " + repr(UNKNOWN_TAG) + " and training time:")
    print(shift_table(shifts))
    timings = board.get("timings_s", {})
    if timings:  # each model's seconds as recorded when it was scored (also for models reused in this run)
        print(f"scoring: {timings.get('images', 0)} images; load+sample {timings.get('load_and_sample', 0):.0f} s, "
              f"judge {timings.get('judge', 0):.1f} s, as recorded when each model was scored")


if __name__ == "__main__":
    main()
