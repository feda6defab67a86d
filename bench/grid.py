"""A 24-cell grid (2 checkpoints × 3 prompts × 4 seeds, 20 steps, tiny SDXL, 32×32) rendered three ways:

  engine      tunelab's SamplingEngine (parses A1111 syntax, encodes each distinct prompt once, batches)
  batched     diffusers' own pipeline call per checkpoint with a list of 12 generators — the limit
  per-cell    one pipeline call per cell — what A1111's XYZ plot does

Prints images/s for each and the ratios (targets: engine ≥ 0.95× batched, ≥ 7× per-cell), and checks that the
engine's images equal the per-cell images (≤ 1/255). On CPU it then prints what bounds the engine: the share of
its time spent inside the UNet (so the ratio it could reach if everything else were free), and the UNet's
GFLOP/s at the engine's batch (24 rows: 12 cells with CFG) next to this CPU's fp32 matmul rate. Run: .venv/bin/python bench/grid.py [--device cuda]"""

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


def unet_share_of_engine(models) -> float:
    """Fraction of one engine render spent inside the UNets' forward calls (timed around each call)."""
    spent = 0.0
    originals = [m.unet.forward for m in models]

    def timed(forward):
        def call(*args, **kwargs):
            nonlocal spent
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            spent += time.perf_counter() - start
            return out
        return call

    for model, forward in zip(models, originals):
        model.unet.forward = timed(forward)
    try:
        start = time.perf_counter()
        render_engine(models)
        total = time.perf_counter() - start
    finally:
        for model, forward in zip(models, originals):
            model.unet.forward = forward
    return spent / total


def unet_gflops(model, batch: int) -> tuple[float, float]:
    """(GFLOP/s of one UNet call at `batch` rows with the engine's text K/V cache, this core's fp32 matmul GFLOP/s)."""
    from torch.utils.flop_counter import FlopCounterMode

    from tunelab.evaluate.text_kv_cache import text_kv_cache

    unet = model.unet
    latent = SIZE // (2 ** (len(model.vae.config.block_out_channels) - 1))
    args = (torch.randn(batch, 4, latent, latent), torch.tensor(500))
    kwargs = dict(encoder_hidden_states=torch.randn(batch, 77, unet.config.cross_attention_dim),
                  added_cond_kwargs=dict(text_embeds=torch.randn(batch, model.text_encoders[1].config.projection_dim),
                                         time_ids=torch.randn(batch, 6)))

    def rate(fn, flops, repeats=10):
        for _ in range(3):
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return flops * repeats / (time.perf_counter() - start) / 1e9

    with text_kv_cache(unet):
        unet(*args, **kwargs)  # first call projects the text keys/values; later calls reuse them, as in sampling
        with FlopCounterMode(display=False) as counter:
            unet(*args, **kwargs)
        unet_rate = rate(lambda: unet(*args, **kwargs), counter.get_total_flops())
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return unet_rate, rate(lambda: a @ b, 2 * 1024**3)


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
        share = unet_share_of_engine(models)
        achieved, peak = unet_gflops(models[0], 2 * len(cells()))
        print(f"engine time inside the UNet: {100 * share:.1f} % -> with everything else free, engine / per-cell "
              f"<= {wall['engine'] / wall['per-cell'] / share:.2f}")
        print(f"UNet at batch {2 * len(cells())}: {achieved:.0f} GFLOP/s; fp32 matmul 1024^3 on this CPU: {peak:.0f} "
              f"GFLOP/s ({100 * achieved / peak:.0f} % of it)")


if __name__ == "__main__":
    main()
