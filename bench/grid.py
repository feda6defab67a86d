"""A 24-cell grid (2 checkpoints × 3 prompts × 4 seeds, 20 steps, tiny SDXL, 32×32) rendered three ways:

  engine      tunelab's SamplingEngine (parses A1111 syntax, encodes each distinct prompt once, batches)
  batched     diffusers' own pipeline call per checkpoint with a list of 12 generators — the limit
  per-cell    one pipeline call per cell — what A1111's XYZ plot does

Prints images/s for each and the ratios (targets: engine ≥ 0.95× batched, ≥ 7× per-cell), and checks that the
engine's images equal the per-cell images (≤ 1/255). Then times the UNet alone at the two batch sizes the grid runs
(2 rows per cell with CFG, 24 rows per checkpoint) and prints the ceiling for any batched renderer: per-cell time
per image ÷ the UNet's share of one image in the batched call (everything but the UNet taken as free). Run: .venv/bin/python bench/grid.py [--device cuda]"""

from __future__ import annotations

import argparse
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


def measure(methods: dict, models, repeats: int) -> tuple[dict, dict, dict]:
    """Best images/s of each method by wall clock and by this process's CPU time (steadier on a shared machine);
    the methods take turns each round so a busy machine slows all of them alike."""
    wall = {name: 0.0 for name in methods}
    cpu = {name: 0.0 for name in methods}
    images = {}
    for _ in range(repeats):
        for name, render in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            images[name] = render(models)
            wall[name] = max(wall[name], len(images[name]) / (time.perf_counter() - start))
            cpu[name] = max(cpu[name], len(images[name]) / (time.process_time() - start_cpu))
    return wall, cpu, images


def unet_batch_ceiling(model, repeats: int = 10) -> tuple[float, float, float]:
    """ms per UNet call at batch 2 (one cell with CFG) and at batch 2 × cells (a checkpoint's whole grid), with the
    engine's text K/V cache, and the per-image ratio between them."""
    from tunelab.evaluate.text_kv_cache import text_kv_cache

    unet = model.unet
    text_dim, pooled_dim = unet.config.cross_attention_dim, model.text_encoders[1].config.projection_dim
    latent = SIZE // (2 ** (len(model.vae.config.block_out_channels) - 1))

    def ms_per_call(batch: int) -> float:
        args = (torch.randn(batch, 4, latent, latent), torch.tensor(500))
        kwargs = dict(encoder_hidden_states=torch.randn(batch, 77, text_dim),
                      added_cond_kwargs=dict(text_embeds=torch.randn(batch, pooled_dim), time_ids=torch.randn(batch, 6)))
        with text_kv_cache(unet):
            for _ in range(3):
                unet(*args, **kwargs)
            start = time.perf_counter()
            for _ in range(repeats):
                unet(*args, **kwargs)
        return (time.perf_counter() - start) / repeats * 1e3

    per_cell, whole = ms_per_call(2), ms_per_call(2 * len(cells()))
    return per_cell, whole, per_cell / (whole / len(cells()))


def max_difference(images_a, images_b) -> int:
    return max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(images_a, images_b))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machines: 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [tiny_sdxl(seed=0), tiny_sdxl(seed=1)]
    if args.device != "cpu":
        models = [m.to(args.device) for m in models]
    render_engine(models[:1])  # warm-up (allocator, kernels)
    methods = {"engine": render_engine, "batched": render_batched, "per-cell": render_per_cell}
    wall, cpu, images = measure(methods, models, args.repeats)
    where = args.device if args.device != "cpu" else f"cpu, {args.threads} thread(s)"
    print(f"24 cells (2 checkpoints x 3 prompts x 4 seeds), {STEPS} steps, {SIZE}x{SIZE}, tiny SDXL, {where}, "
          f"best of {args.repeats} interleaved rounds")
    clocks = {"wall clock": wall} if args.device != "cpu" else {"wall clock": wall, "process CPU time": cpu}
    for clock, rates in clocks.items():
        print(f"[{clock}]")
        print(f"  engine    {rates['engine']:7.2f} images/s")
        print(f"  batched   {rates['batched']:7.2f} images/s   (diffusers, one call per checkpoint, list of generators)")
        print(f"  per-cell  {rates['per-cell']:7.2f} images/s   (one pipeline call per cell, A1111 style)")
        print(f"  engine / batched  = {rates['engine'] / rates['batched']:.3f}   (target >= 0.95)")
        print(f"  engine / per-cell = {rates['engine'] / rates['per-cell']:.2f}    (target >= 7)")
        print(f"  batched / per-cell = {rates['batched'] / rates['per-cell']:.2f}")
    print(f"max pixel difference, engine vs per-cell: {max_difference(images['engine'], images['per-cell'])}/255, "
          f"vs batched: {max_difference(images['engine'], images['batched'])}/255")
    if args.device == "cpu":
        per_cell, whole, unet_ratio = unet_batch_ceiling(models[0])
        unet_ms_per_image = STEPS * whole / len(cells())
        ceiling = 1e3 / wall["per-cell"] / unet_ms_per_image
        print(f"UNet alone: {per_cell:.1f} ms at batch 2 (one cell), {whole:.1f} ms at batch {2 * len(cells())} "
              f"(all {len(cells())} cells): {unet_ratio:.2f}x cheaper per image batched")
        print(f"ceiling for any batched renderer (all but the UNet free): per-cell {1e3 / wall['per-cell']:.0f} ms/image "
              f"/ {unet_ms_per_image:.0f} ms/image = {ceiling:.2f}x per-cell")


if __name__ == "__main__":
    main()
