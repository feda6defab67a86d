"""Regularisation images against forgetting, measured on the toy world (DESIGN: mixing known images 1:1 into the
finetune set removes most of the forgetting).

For each text-encoder mode, two finetunes of the shipped toy base with the demo's recipe (48 finetune images,
batch 16, the demo's learning rate and caption policy): on the finetune world alone, and with 48 known base-world
images added as regularisation images (`is_reg`, loss weight `--prior-loss-weight`). Same steps, so with the
regularisation folder each finetune image is seen half as often. Every finetune is kept, then the base and all of
them are scored together with the toy probes file (`score_toy_models`, the code of `tunelab score`): pass rates,
paired changes against the base with 95 % intervals, verdicts and contamination; and the training wall time.

    .venv/bin/python bench/toy_prior.py [--modes on] [--steps 300] [--threads 2] [--samples 16] [--seeds 2]

With --seeds N each finetune is trained with training seeds 0 … N-1 (intervals then cover the seed-to-seed
spread). With --work a re-run reuses what is there: a checkpoint trained from the same config is not trained
again, a model already scored with the same probes is not sampled again."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from toy_sweep import train_or_reuse  # bench/ is on sys.path when run as a script


def main() -> None:
    from tunelab.demo import DEMO_LEARNING_RATE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="off,on")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=DEMO_LEARNING_RATE)
    parser.add_argument("--prior-loss-weight", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=16, help="samples per probe prompt for the judge")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per finetune: 0, 1, …")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.samples < 2:  # checked before any training: the scoreboard's intervals need two images a concept
        raise SystemExit("--samples: at least 2 (a concept's interval needs two images)")
    if args.seeds < 1:
        raise SystemExit("--seeds: at least 1")
    torch.set_num_threads(args.threads)

    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.demo import toy_run_toml
    from tunelab.score.run import ModelRun
    from tunelab.score.table import format_scoreboard
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import score_toy_models
    from tunelab.toy.world import write_dataset

    wall: dict[str, float | None] = {}
    checkpoints: dict[str, list[Path]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = (args.work or Path(tmp)).resolve()
        for variant in ("alone", "reg"):
            folder = root / variant
            write_dataset(folder / "images", "finetune", count=48, progress=False)
            if variant == "reg":
                write_dataset(folder / "reg", "base", count=48, seed=1, progress=False)
            for mode in args.modes.split(","):
                name = f"{mode}-{variant}"
                for seed in range(args.seeds):
                    run_name = mode if args.seeds == 1 else f"{mode}-seed{seed}"
                    text = toy_run_toml(base=TOY_BASE_DIR, mode=mode, name=run_name, seed=seed, steps=args.steps,
                                        learning_rate=args.lr,
                                        regularisation_folder="reg" if variant == "reg" else None,
                                        prior_loss_weight=args.prior_loss_weight)
                    if seed == 0:  # index and caches: the same for every seed
                        data_config = folder / f"prepare-{mode}.toml"
                        data_config.write_text(text)
                        prepare_dataset(load_data_config(data_config), progress=False)
                        build_caches(data_config, progress=False)
                    final = folder / f"run-{run_name}/checkpoints/step-{args.steps:06d}/model"
                    stale = root / "score" / "models" / ModelRun(name, final, seed, args.seeds).folder_name
                    key = name if args.seeds == 1 else f"{name}, seed {seed}"
                    wall[key] = train_or_reuse(folder / f"{run_name}.toml", text, final, stale)
                    checkpoints.setdefault(name, []).append(final)
                    print(f"{key}: " + ("reused (trained from the same config)" if wall[key] is None
                                        else f"trained in {wall[key]:.1f} s"), flush=True)
        board = score_toy_models({"base": [TOY_BASE_DIR], **checkpoints}, root / "score",
                                 samples_per_prompt=args.samples, log=lambda line: print(line, flush=True))
    print(f"\n{args.steps} steps, batch 16, lr {args.lr:g}, 48 finetune images; 'reg': + 48 base-world images as "
          f"regularisation images (prior_loss_weight {args.prior_loss_weight:g}); {args.samples} samples per probe "
          f"prompt; {args.seeds} training seed(s)")
    print(format_scoreboard(board))
    print("train wall s: " + "; ".join(f"{k}: {'reused' if v is None else f'{v:.0f}'}" for k, v in wall.items()))


if __name__ == "__main__":
    main()
