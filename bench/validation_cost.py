"""What validation costs during training: its share of training wall time at the default cadence.

One run of the real training loop (`tunelab.train.recipe.build_run` + `loop.train`) with validation every
`--every` steps, so both are measured side by side on the same model, data and machine:
- the median time of a training step (steps that did not validate),
- the median time of one validation call over sets of the default sizes ([validation] max_held_out held-out items
  + `--prompts` retention prompts × samples_per_prompt, each at the training latent size, × bands),
then the share validation takes of wall time at the default cadence (every_n_images = 8000 training images, i.e.
500 steps at batch 16) and, as a check of that arithmetic, the share measured in this run at `--every`. One row per
training batch (`--batches`). The retention set's one-time generation (cached per base model) is not part of the cadence cost.

    .venv/bin/python bench/validation_cost.py [--steps 16] [--every 8] [--batches 16,4] [--model toy|sdxl]
        [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def model(name: str, device: str):
    if name == "sdxl":  # full-size SDXL with random weights (speed does not depend on the values)
        sys.path.insert(0, str(Path(__file__).parent))
        from cuda_train import full_size_sdxl

        return full_size_sdxl(device), 128
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl(te_widths=(32, 32)).to(device), 8  # the toy base's architecture, 32×32 images


def default_sized_sets(config, latent_side: int, prompts: int):
    """Held-out and retention sets of the default sizes; content does not change the cost."""
    from tunelab.validate.sets import ValidationItem, ValidationSet

    g = torch.Generator().manual_seed(0)
    size = latent_side * 8

    def items(prefix: str, count: int) -> list[ValidationItem]:
        return [ValidationItem(f"{prefix}{i}", torch.randn(4, latent_side, latent_side, generator=g),
                               f"tag{i % 7}, red hair, forest, masterpiece", (size, size), (0, 0), (size, size))
                for i in range(count)]

    return [ValidationSet("held_out", items("h", config.max_held_out)),
            ValidationSet("retention", items("r", prompts * config.samples_per_prompt))]


def measure(args, batch: int) -> dict:
    """One run of the real loop at this training batch, validating every `args.every` steps."""
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.config import RunConfig
    from tunelab.train.loop import train
    from tunelab.train.recipe import build_run
    from tunelab.validate.config import ValidationConfig
    from tunelab.validate.validator import Validator

    components, side = model(args.model, args.device)
    count = batch * args.steps
    g = torch.Generator().manual_seed(1)
    data = {"latents": torch.randn(count, 4, side, side, generator=g),
            "captions": [f"tag{i % 11}, blue eyes, beach, best quality" for i in range(count)]}
    cuda = args.device.startswith("cuda")
    config = RunConfig.model_validate({
        "model": {"path": "unused"},
        "train": {"output_dir": tempfile.mkdtemp(), "max_steps": args.steps, "batch_size": batch,
                  "mixed_precision": "bf16" if cuda else "no", "gradient_checkpointing": args.model == "sdxl"},
        "unet": {"learning_rate": 1e-5}, "text_encoder": {"mode": args.text_encoders},
        "checkpoint": {"every_n_epochs": 0, "save_state": False},
        "logging": {"progress_bar": False, "tensorboard": False},
        "validation": {"every_n_steps": args.every, "held_out": False, "at_checkpoints": False},
    })
    run = build_run(config, components, InMemoryBatches(data, batch_size=batch))
    run.validation = Validator(config, components, sets=default_sized_sets(ValidationConfig(), side, args.prompts))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    stamps, validation_times = [], []
    log_step, validate = run.logger.step, run.validation.run

    def timed_step(*a, **k):
        sync()
        stamps.append(time.perf_counter())
        return log_step(*a, **k)

    def timed_validation(*a, **k):
        sync()
        start = time.perf_counter()
        result = validate(*a, **k)
        sync()
        validation_times.append(time.perf_counter() - start)
        return result

    run.logger.step, run.validation.run = timed_step, timed_validation
    start = time.perf_counter()
    train(run)
    sync()
    wall = time.perf_counter() - start
    # a step's interval [stamp_i, stamp_i+1] holds the validation after step i when it ran: leave those out
    validated = {s - 1 for s in range(args.every, args.steps + 1, args.every)}
    plain = [b - a for i, (a, b) in enumerate(zip(stamps, stamps[1:])) if i not in validated][1:]
    return {"batch": batch, "step_s": statistics.median(plain), "validation_s": statistics.median(validation_times),
            "validations": len(validation_times), "measured_share": sum(validation_times) / wall,
            "items": sum(len(s.items) for s in run.validation.sets)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--every", type=int, default=8, help="validation cadence in this run (to measure it)")
    parser.add_argument("--batches", default="16,4", help="training batches to measure ([train] default: 16)")
    parser.add_argument("--prompts", type=int, default=8, help="retention prompts")
    parser.add_argument("--model", choices=["toy", "sdxl"], default="toy")
    parser.add_argument("--text-encoders", choices=["off", "on"], default="off")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tunelab.validate.config import ValidationConfig

    defaults = ValidationConfig()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({args.threads} thread(s))"
    print(f"model {args.model} on {device}; text encoders {args.text_encoders}; validation over "
          f"held-out {defaults.max_held_out} + retention {args.prompts}×{defaults.samples_per_prompt} items "
          f"× {defaults.bands} bands")
    print(f"{'batch':>5}  {'step ms':>8}  {'validation ms':>13}  {'= steps':>7}  {'measured (every ' + str(args.every) + ')':>20}"
          f"  {'default cadence':>16}  {'share':>6}")
    for batch in (int(b) for b in args.batches.split(",")):
        r = measure(args, batch)
        every = defaults.cadence(batch)
        predicted = r["validation_s"] / (args.every * r["step_s"] + r["validation_s"])
        share = r["validation_s"] / (every * r["step_s"] + r["validation_s"])
        print(f"{batch:>5}  {r['step_s'] * 1000:8.1f}  {r['validation_s'] * 1000:13.1f}  "
              f"{r['validation_s'] / r['step_s']:7.1f}  {r['measured_share']:>9.1%} (pred {predicted:5.1%})  "
              f"{f'every {every} steps':>16}  {share:6.2%}", flush=True)
    print(f"default cadence: every_n_images = {defaults.every_n_images} training images; target share ≤ 5%")


if __name__ == "__main__":
    main()
