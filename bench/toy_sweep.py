"""Sweep toy finetunes over text-encoder mode × UNet lr × text-encoder lr (× steps) and print one table.

Each run finetunes the shipped toy base on the toy finetune world (48 images, batch 16) through the real pipeline
(`toy_run_toml` → prepare → caches → `run_training`), then judges the final checkpoint with the toy evaluation:

- zorb: the unseen tag (a purple star) drawn when prompted — "learned";
- z-attr: partial credit for zorb (share of its two attributes, purple and star, the samples show);
- kiko: the half-known character with all her attributes;
- known / retention: known shapes (also in the finetune set) / concepts absent from it (cars, mira, locations):
  "kept";
- leak: how often the *other* prompts draw a purple star; uncond: how often the empty prompt does (if these rise
  with zorb, "learned" means the model draws stars everywhere, not that it learned the tag);
- Δemb: how far the tag's token embeddings moved (L2 change / L2 norm, mean over its BPE tokens and both encoders).

    .venv/bin/python bench/toy_sweep.py --runs on:1e-5:1e-5,on:1e-5:1e-4 [--steps 300] [--samples 16]

A run is `mode:unet_lr:te_lr[:steps]` (te_lr is ignored by mode off; unet_lr by mode only). One training process
at a time, 1 thread by default (the machine is shared)."""

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


def row(name: str, scores: dict, shift: float | None, seconds: float | None) -> str:
    values = [scores["per_concept"]["zorb"], scores["per_concept_attributes"]["zorb"], scores["per_concept"]["kiko"],
              scores["per_group"]["known"], scores["per_group"]["retention"], scores["leakage"]["zorb"],
              scores["unconditional_chance"]["zorb"]]
    cells = "".join(f"{100 * v:7.0f}" for v in values)
    extra = f"{shift:7.2f}" if shift is not None else f"{'-':>7}"
    extra += f"{seconds:7.0f}" if seconds is not None else f"{'-':>7}"
    return f"{name:<28}{cells}{extra}"


HEADER = f"{'run (mode-unet lr-te lr-steps)':<28}" + "".join(
    f"{h:>7}" for h in ("zorb%", "z-attr%", "kiko%", "known%", "ret%", "leak%", "uncond%", "Δemb", "wall s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated mode:unet_lr:te_lr[:steps]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--samples", type=int, default=16, help="samples per evaluation prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="training seed and first sampling seed")
    parser.add_argument("--captions", type=json.loads, default=None,
                        help="caption policy as JSON; default: the demo's (tunelab.demo.TOY_FINETUNE_CAPTIONS); "
                             "'{}': the captions as written")
    parser.add_argument("--no-base", action="store_true", help="skip judging the base model")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    runs = parse_runs(args.runs, args.steps)
    torch.set_num_threads(args.threads)

    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.demo import TOY_FINETUNE_CAPTIONS, toy_run_toml
    from tunelab.models.io import load_model
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.concepts import UNKNOWN_TAG
    from tunelab.toy.evaluation import EvalSettings, evaluate_model
    from tunelab.toy.world import write_dataset
    from tunelab.train.config import load_run_config
    from tunelab.train.recipe import run_training

    settings = EvalSettings(samples_per_prompt=args.samples, seed=args.seed)
    captions = TOY_FINETUNE_CAPTIONS if args.captions is None else args.captions
    base = load_model(TOY_BASE_DIR)
    base_rows = token_rows(base, UNKNOWN_TAG)
    lines = [HEADER]
    print(HEADER, flush=True)
    if not args.no_base:
        lines.append(row("base", evaluate_model(base, settings), None, None))
        print(lines[-1], flush=True)
    del base
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        write_dataset(root / "images", "finetune", count=args.images, progress=False)
        prepared: set[str] = set()
        for run in runs:
            config = root / f"{run.mode}.toml"
            text = toy_run_toml(base=TOY_BASE_DIR, mode=run.mode, steps=run.steps, batch_size=args.batch_size,
                                learning_rate=run.unet_lr, text_encoder_learning_rate=run.te_lr, captions=captions)
            config.write_text(text.replace("\nseed = 0\n", f"\nseed = {args.seed}\n"))
            if run.mode not in prepared:  # the caches depend on the mode only (text embeddings where frozen)
                prepare_dataset(load_data_config(config), progress=False)
                build_caches(config, progress=False)
                prepared.add(run.mode)
            shutil.rmtree(root / f"run-{run.mode}", ignore_errors=True)
            started = time.perf_counter()
            run_training(load_run_config(config))
            seconds = time.perf_counter() - started
            model = load_model(root / f"run-{run.mode}/checkpoints/step-{run.steps:06d}/model")
            shift = embedding_shift(base_rows, token_rows(model, UNKNOWN_TAG))
            lines.append(row(run.label, evaluate_model(model, settings), shift, seconds))
            print(lines[-1], flush=True)
            shutil.rmtree(root / f"run-{run.mode}", ignore_errors=True)
    print(f"\n{args.images} images, batch {args.batch_size}, {args.samples} samples per prompt, "
          f"{args.threads} thread(s), seed {args.seed}; captions {json.dumps(dict(captions) or 'as written')}; "
          "wall s = training only")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
