"""Finetune the toy base on the toy finetune world in each text-encoder mode (off / on / only) and time it.

The recipe of the design notes: 48 finetune images (32×32), batch 16, 300 steps, lr 1e-5, latents cached, 2 CPU
threads; the demo's caption policy (`toy_run_toml`: tags shuffled and dropped, so text embeddings are not cached).
Done-when target: each mode ≤ 2 minutes.

    .venv/bin/python bench/toy_finetune.py [--base PATH] [--steps 300] [--threads 2] [--evaluate]

--base defaults to the toy base shipped in the package (`tunelab.toy.base_model`). --evaluate samples the base and
each result and prints the toy evaluation's correct rate per concept group (known, half-known, unknown,
retention). On a machine shared with other processes use --threads 1: two threads on oversubscribed cores wait
for each other at every operation (measured here: 2.4 s/step with 2 threads vs 0.34 s/step with 1)."""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--evaluate", action="store_true", help="judge each result with the toy evaluation")
    parser.add_argument("--work", type=Path, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.demo import toy_run_toml
    from tunelab.models.io import load_model
    from tunelab.toy.world import write_dataset
    from tunelab.train.config import load_run_config
    from tunelab.train.recipe import run_training

    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        write_dataset(root / "images", "finetune", count=args.images, progress=False)
        from tunelab.toy.base_model import TOY_BASE_DIR

        base = args.base or TOY_BASE_DIR
        results = {}
        if args.evaluate:
            from tunelab.toy.evaluation import evaluate_model

            results["base"] = {"evaluation": evaluate_model(load_model(base))["per_group"]}
            print("base", json.dumps(results["base"]), flush=True)
        for mode in args.modes.split(","):
            config = root / f"{mode}.toml"
            config.write_text(toy_run_toml(base=Path(base).resolve(), mode=mode, steps=args.steps,
                                           learning_rate=args.lr))
            start, cpu_start = time.perf_counter(), time.process_time()
            prepare_dataset(load_data_config(config), progress=False)
            build_caches(config, progress=False)
            prepared, cpu_prepared = time.perf_counter(), time.process_time()
            run_training(load_run_config(config))
            done, cpu_done = time.perf_counter(), time.process_time()
            # CPU seconds too: on a shared machine wall time says more about the neighbours than about us
            results[mode] = {"prepare+cache s": round(prepared - start, 1), "train s": round(done - prepared, 1),
                             "train cpu s": round(cpu_done - cpu_prepared, 1), "load": round(os.getloadavg()[0], 1)}
            if args.evaluate:
                final = root / f"run-{mode}/checkpoints/step-{args.steps:06d}/model"
                results[mode]["evaluation"] = evaluate_model(load_model(final))["per_group"]
            print(mode, json.dumps(results[mode]), flush=True)
        print(f"\n{args.steps} steps, batch 16, {args.images} images, {args.threads} threads")
        for mode, r in results.items():
            if args.evaluate:
                print(f"{mode:>5} correct rate per group: "
                      + ", ".join(f"{g} {100 * v:.0f} %" for g, v in r["evaluation"].items()))
            if mode == "base":
                continue
            verdict = "ok" if r["train s"] <= 120 else "over 2 min"
            print(f"mode {mode:>4}: train {r['train s']:6.1f} s wall ({verdict}), {r['train cpu s']:.1f} CPU s, "
                  f"load average {r['load']}; prepare+cache {r['prepare+cache s']:.1f} s")


if __name__ == "__main__":
    main()
