"""What validation costs during training: its share of training wall time at the default cadence.

One run of the real training loop (`tunelab.train.recipe.build_run` + `loop.train`) with validation every
`--every` steps, so both are measured side by side on the same model, data and machine:
- the median time of a training step (steps that did not validate),
- the median time of one validation call over sets of the default sizes ([validation] max_held_out held-out items
  + `--prompts` retention prompts × samples_per_prompt, each at the training latent size, × bands),
then the share validation takes of wall time at the default cadence (`every_n_steps`), and at `--every` as measured
in this run. The retention set's one-time generation (cached per base model) is not part of the cadence cost.

    .venv/bin/python bench/validation_cost.py [--steps 24] [--every 8] [--batch 16] [--model toy|sdxl]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=8, help="validation cadence in this run (to measure it)")
    parser.add_argument("--batch", type=int, default=16, help="training batch ([train] batch_size default: 16)")
    parser.add_argument("--prompts", type=int, default=8, help="retention prompts")
    parser.add_argument("--model", choices=["toy", "sdxl"], default="toy")
    parser.add_argument("--text-encoders", choices=["off", "on"], default="off")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.config import RunConfig
    from tunelab.train.loop import train
    from tunelab.train.recipe import build_run
    from tunelab.validate.config import ValidationConfig
    from tunelab.validate.validator import Validator

    components, side = model(args.model, args.device)
    count = args.batch * args.steps
    g = torch.Generator().manual_seed(1)
    data = {"latents": torch.randn(count, 4, side, side, generator=g),
            "captions": [f"tag{i % 11}, blue eyes, beach, best quality" for i in range(count)]}
    defaults = ValidationConfig()
    cuda = args.device.startswith("cuda")
    config = RunConfig.model_validate({
        "model": {"path": "unused"},
        "train": {"output_dir": tempfile.mkdtemp(), "max_steps": args.steps, "batch_size": args.batch,
                  "mixed_precision": "bf16" if cuda else "no", "gradient_checkpointing": args.model == "sdxl"},
        "unet": {"learning_rate": 1e-5}, "text_encoder": {"mode": args.text_encoders},
        "checkpoint": {"every_n_epochs": 0, "save_state": False},
        "logging": {"progress_bar": False, "tensorboard": False},
        "validation": {"every_n_steps": args.every, "held_out": False, "at_checkpoints": False},
    })
    run = build_run(config, components, InMemoryBatches(data, batch_size=args.batch))
    run.validation = Validator(config, components, sets=default_sized_sets(defaults, side, args.prompts))

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
    step_s, validation_s = statistics.median(plain), statistics.median(validation_times)
    items = sum(len(s.items) for s in run.validation.sets)

    def share(every: int) -> float:
        return validation_s / (every * step_s + validation_s)

    device = torch.cuda.get_device_name() if cuda else f"cpu ({args.threads} thread(s))"
    print(f"model {args.model} on {device}; training batch {args.batch}, text encoders {args.text_encoders}")
    print(f"validation call: {items} items × {defaults.bands} bands = {items * defaults.bands} UNet samples "
          f"(held-out {defaults.max_held_out} + retention {args.prompts}×{defaults.samples_per_prompt})")
    print(f"median training step  {step_s * 1000:9.1f} ms")
    print(f"median validation     {validation_s * 1000:9.1f} ms  = {validation_s / step_s:.1f} training steps")
    print(f"measured in this run: {len(validation_times)} validations in {args.steps} steps, "
          f"{sum(validation_times) / wall:.1%} of wall time (predicted {share(args.every):.1%} at every {args.every})")
    print(f"share at the default cadence (every_n_steps = {defaults.every_n_steps}): {share(defaults.every_n_steps):.2%}"
          f"  [target ≤ 5%]")
    for batch in (4, 1):  # the cadence is in steps: smaller batches make steps cheaper, validation relatively dearer
        scaled = validation_s / (defaults.every_n_steps * step_s * batch / args.batch + validation_s)
        print(f"  estimate at training batch {batch} (step time ∝ batch): {scaled:.2%}")


if __name__ == "__main__":
    main()
