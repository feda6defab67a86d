"""A 24-cell grid (2 checkpoints × 3 prompts × 4 seeds, 20 steps, tiny SDXL, 32×32) rendered three ways:

  engine      tunelab's SamplingEngine (parses A1111 syntax, encodes each distinct prompt once, batches)
  batched     diffusers' own pipeline call per checkpoint with a list of 12 generators — the limit
  per-cell    one pipeline call per cell — what A1111's XYZ plot does

Prints images/s for each and the ratios (targets: engine ≥ 0.95× batched, ≥ 7× per-cell), and checks that the
engine's images equal the per-cell images (≤ 1/255). Run: .venv/bin/python bench/grid.py"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import EulerAncestralDiscreteScheduler  # noqa: E402

from tunelab.evaluate.sampling import SampleRequest, SamplingEngine  # noqa: E402
from tunelab.models.tiny import tiny_sdxl  # noqa: E402

PROMPTS = ["red circle, forest", "blue square, beach", "green triangle, city"]
SEEDS = [1, 2, 3, 4]
STEPS, CFG, SIZE = 20, 7.0, 32


def cells():
    return [(p, s) for p in PROMPTS for s in SEEDS]


def pipeline(model):
    pipe = model.pipeline(scheduler=EulerAncestralDiscreteScheduler.from_config(model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_engine(models):
    images = []
    for model in models:
        engine = SamplingEngine(model, batch_size=len(cells()), progress=False)
        base = SampleRequest(prompt="", seed=0, steps=STEPS, cfg_scale=CFG, sampler="Euler a", width=SIZE, height=SIZE)
        images += engine.render([base.with_(prompt=p, seed=s) for p, s in cells()])
    return images


def render_batched(models):
    images = []
    for model in models:
        prompts = [p for p, _ in cells()]
        images += pipeline(model)(
            prompts, negative_prompt=[""] * len(prompts), num_inference_steps=STEPS, guidance_scale=CFG,
            width=SIZE, height=SIZE, generator=[torch.Generator().manual_seed(s) for _, s in cells()],
        ).images
    return images


def render_per_cell(models):
    images = []
    for model in models:
        pipe = pipeline(model)
        for p, s in cells():
            images += pipe(
                p, negative_prompt="", num_inference_steps=STEPS, guidance_scale=CFG, width=SIZE, height=SIZE,
                generator=torch.Generator().manual_seed(s),
            ).images
    return images


def timed(fn, models, repeats: int):
    best, images = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        images = fn(models)
        best = min(best, time.perf_counter() - start)
    return len(images) / best, images


@torch.no_grad()
def main(repeats: int = 3) -> None:
    torch.set_num_threads(1)
    models = [tiny_sdxl(seed=0), tiny_sdxl(seed=1)]
    render_engine(models[:1])  # warm-up (allocator, kernels)
    rate_engine, img_engine = timed(render_engine, models, repeats)
    rate_batched, img_batched = timed(render_batched, models, repeats)
    rate_cell, img_cell = timed(render_per_cell, models, max(1, repeats - 2))
    diff = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(img_engine, img_cell))
    diff_b = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(img_engine, img_batched))
    print(f"24 cells (2 checkpoints x 3 prompts x 4 seeds), {STEPS} steps, {SIZE}x{SIZE}, tiny SDXL, 1 thread, best of {repeats}")
    print(f"engine    {rate_engine:7.2f} images/s")
    print(f"batched   {rate_batched:7.2f} images/s   (diffusers, one call per checkpoint, list of generators)")
    print(f"per-cell  {rate_cell:7.2f} images/s   (one pipeline call per cell, A1111 style)")
    print(f"engine / batched  = {rate_engine / rate_batched:.3f}   (target >= 0.95)")
    print(f"engine / per-cell = {rate_engine / rate_cell:.2f}    (target >= 7)")
    print(f"max pixel difference engine vs per-cell: {diff}/255, vs batched: {diff_b}/255")


if __name__ == "__main__":
    main()
