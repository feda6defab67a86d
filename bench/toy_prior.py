"""Regularisation images against forgetting, measured on the toy world (DESIGN: mixing known images 1:1 into the
finetune set removes most of the forgetting).

For each text-encoder mode, two finetunes of the shipped toy base with the demo's recipe (48 finetune images,
batch 16, the demo's learning rate and caption policy): on the finetune world alone, and with 48 known base-world
images added as regularisation images (`is_reg`, loss weight `--prior-loss-weight`). Same steps, so with the
regularisation folder each finetune image is seen half as often. Prints the toy scoreboard of base and every
finetune, and the training wall time.

    .venv/bin/python bench/toy_prior.py [--modes on] [--steps 300] [--threads 2] [--samples 16]"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from tunelab.demo import DEMO_LEARNING_RATE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="off,on")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=DEMO_LEARNING_RATE)
    parser.add_argument("--prior-loss-weight", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=16, help="samples per prompt for the judge")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.demo import format_scoreboard, toy_run_toml
    from tunelab.models.io import load_model
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import EvalSettings, evaluate_model
    from tunelab.toy.world import write_dataset
    from tunelab.train.config import load_run_config
    from tunelab.train.recipe import run_training

    settings = EvalSettings(samples_per_prompt=args.samples)
    scores = {"base": evaluate_model(load_model(TOY_BASE_DIR), settings)}
    wall = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        for variant in ("alone", "reg"):
            folder = root / variant
            write_dataset(folder / "images", "finetune", count=48, progress=False)
            if variant == "reg":
                write_dataset(folder / "reg", "base", count=48, seed=1, progress=False)
            for mode in args.modes.split(","):
                config = folder / f"{mode}.toml"
                config.write_text(toy_run_toml(base=TOY_BASE_DIR, mode=mode, steps=args.steps, learning_rate=args.lr,
                                               regularisation_folder="reg" if variant == "reg" else None,
                                               prior_loss_weight=args.prior_loss_weight))
                prepare_dataset(load_data_config(config), progress=False)
                build_caches(config, progress=False)
                start = time.perf_counter()
                run_training(load_run_config(config))
                name = f"{mode}-{variant}"
                wall[name] = time.perf_counter() - start
                final = folder / f"run-{mode}/checkpoints/step-{args.steps:06d}/model"
                scores[name] = evaluate_model(load_model(final), settings)
                print(f"{name}: trained in {wall[name]:.1f} s", flush=True)
    print(f"\n{args.steps} steps, batch 16, lr {args.lr:g}, 48 finetune images; 'reg': + 48 base-world images as "
          f"regularisation images (prior_loss_weight {args.prior_loss_weight:g}); {args.samples} samples per prompt")
    print(format_scoreboard(scores))
    print("train wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))


if __name__ == "__main__":
    main()
