"""Finetune the toy base on the toy finetune world in each text-encoder mode (off / on / only) and time it.

The recipe of the design notes: 48 finetune images (32×32), batch 16, 300 steps, lr 1e-5, latents cached, 2 CPU
threads; the demo's caption policy (`toy_run_toml`: tags shuffled and dropped, so text embeddings are not cached).
Done-when target: each mode ≤ 2 minutes.

    .venv/bin/python bench/toy_finetune.py [--base PATH] [--steps 300] [--threads 2] [--evaluate]

--base defaults to the toy base shipped in the package (`tunelab.toy.base_model`). --evaluate scores the base and
each result with the toy probes file (`score_toy_models`, the code of `tunelab score`; --samples images per probe
prompt; folder `score/` under --work, where a re-run reuses the base's scores: every mode is trained afresh, being
timed) and prints the scoreboard: pass rate, change against the base with its 95 % interval, and verdict per
concept. On a machine shared with other processes use --threads 1: two threads on oversubscribed cores wait for
each other at every operation (measured here: 2.4 s/step with 2 threads vs 0.34 s/step with 1)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--modes", default="off,on,only")
    parser.add_argument("--evaluate", action="store_true", help="score the base and each result (toy probes file)")
    parser.add_argument("--samples", type=int, default=16, help="with --evaluate: samples per probe prompt")
    parser.add_argument("--work", type=Path, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.samples < 2:  # checked before any training: the scoreboard's intervals need two images a concept
        raise SystemExit("--samples: at least 2 (a concept's interval needs two images)")
    torch.set_num_threads(args.threads)

    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.demo import toy_run_toml
    from tunelab.score.table import format_scoreboard
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import score_toy_models
    from tunelab.toy.world import write_dataset
    from tunelab.train.config import load_run_config
    from tunelab.train.recipe import run_training

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.work or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        write_dataset(root / "images", "finetune", count=args.images, progress=False)
        base = Path(args.base or TOY_BASE_DIR).resolve()
        results = {}
        checkpoints: dict[str, list[Path]] = {}
        for mode in args.modes.split(","):
            config = root / f"{mode}.toml"
            config.write_text(toy_run_toml(base=base, mode=mode, steps=args.steps, learning_rate=args.lr))
            start, cpu_start = time.perf_counter(), time.process_time()
            prepare_dataset(load_data_config(config), progress=False)
            build_caches(config, progress=False)
            prepared, cpu_prepared = time.perf_counter(), time.process_time()
            run = load_run_config(config)
            shutil.rmtree(run.train.output_dir, ignore_errors=True)  # a timing bench: always trains afresh
            shutil.rmtree(root / "score" / "models" / mode, ignore_errors=True)  # the old weights' scores
            run_training(run)
            done, cpu_done = time.perf_counter(), time.process_time()
            # CPU seconds too: on a shared machine wall time says more about the neighbours than about us
            results[mode] = {"prepare+cache s": round(prepared - start, 1), "train s": round(done - prepared, 1),
                             "train cpu s": round(cpu_done - cpu_prepared, 1), "load": round(os.getloadavg()[0], 1)}
            checkpoints[mode] = [Path(run.train.output_dir) / f"checkpoints/step-{args.steps:06d}/model"]
            print(mode, json.dumps(results[mode]), flush=True)
        board = None
        if args.evaluate:
            board = score_toy_models({"base": [base], **checkpoints}, root / "score", samples_per_prompt=args.samples,
                                     log=lambda line: print(line, flush=True))
        print(f"\n{args.steps} steps, batch 16, {args.images} images, {args.threads} threads")
        if board is not None:
            print(format_scoreboard(board))
        for mode, r in results.items():
            verdict = "ok" if r["train s"] <= 120 else "over 2 min"
            print(f"mode {mode:>4}: train {r['train s']:6.1f} s wall ({verdict}), {r['train cpu s']:.1f} CPU s, "
                  f"load average {r['load']}; prepare+cache {r['prepare+cache s']:.1f} s")


if __name__ == "__main__":
    main()
