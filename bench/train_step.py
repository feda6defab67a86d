"""Trainer overhead and the text-embedding cache, measured side by side in one run.

1. Loop step time ÷ bare step time: the full training loop (`tunelab.train.loop.train`: noise per sample, loss,
   gradient clipping, NaN guard, LR schedule, TensorBoard, progress bar) against a bare
   forward + backward + AdamW step of the same UNet on the same batch (noise and embeddings precomputed).
   Interleaved rounds, median step time of each, as process CPU time (one thread: the work done, which load from
   other processes on a shared machine barely changes) and as wall time. Target ≤ 1.03.
2. Text encoders frozen: cached embeddings (encoders offloaded, never in memory) vs encoding the captions every
   step: images/s of each and the ratio; model weights held in memory during training; peak memory during training
   (CUDA: max allocated; CPU: max RSS sampled every step), each variant in its own process; the encoders' size.
3. train.compile on / off (cached embeddings, each in its own process): compile time, steady-state images/s
   (median step after the first two), peak RSS of the whole process (final checkpoint included).

    .venv/bin/python bench/train_step.py [--steps 12] [--rounds 3] [--batch 8] [--device cpu|cuda] [--threads 1]
                                         [--compile-rounds 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def components(device: str):
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl()


def items(count: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    captions = [f"{c} {s}, solo, simple background" for c in ("red", "green", "blue", "yellow")
                for s in ("circle", "square", "star")] * (count // 12 + 1)
    return {"latents": torch.randn(count, 4, 8, 8, generator=g), "captions": captions[:count]}


def config(output_dir: Path, steps: int, batch: int, device: str, **train):
    """The benchmark's run config; `train` adds [train] keys (only given ones: an older trainer may not know them)."""
    from tunelab.train.config import RunConfig

    return RunConfig.model_validate({
        "model": {"path": "unused"},
        "train": {"output_dir": str(output_dir), "max_steps": steps, "batch_size": batch, **train},
        "unet": {"learning_rate": 1e-5},
        "text_encoder": {"mode": "off"},
        "checkpoint": {"every_n_epochs": 0, "save_state": False},
        "logging": {"progress_bar": True, "histogram_every_n_steps": 10},
    })


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def deltas(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def timed_loop(run) -> list[tuple[float, float]]:
    """Run the real loop; (wall, CPU) seconds of each optimizer step (the final checkpoint write excluded)."""
    import psutil

    from tunelab.train.loop import train

    stamps, rss = [clock()], [psutil.Process().memory_info().rss]
    original = run.logger.step

    def step(*args, **kwargs):
        original(*args, **kwargs)
        stamps.append(clock())
        rss.append(psutil.Process().memory_info().rss)

    run.logger.step = step
    run.weights_held = sum(t.numel() * t.element_size() for m in run.components.named_parts().values()
                           for t in (*m.parameters(), *m.buffers()) if t.device.type != "meta")
    if run.accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(run)
    run.peak_rss = max(rss)
    return deltas(stamps)


def loop_steps(steps: int, batch: int, device: str, cached: bool, tmp: Path, **train) -> tuple[list[float], object]:
    from tunelab.models.text_conditioning import encode_prompts
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.recipe import build_run

    c = components(device)
    data = items(batch * 4)
    if cached:
        with torch.no_grad():
            embeddings = encode_prompts(c, data["captions"], empty_as_zeros=True)
        data.update(prompt_embeds=embeddings.prompt_embeds, pooled_prompt_embeds=embeddings.pooled_prompt_embeds)
    run = build_run(config(tmp, steps, batch, device, **train), c, InMemoryBatches(data, batch_size=batch))
    return timed_loop(run), run


def bare_steps(steps: int, batch: int, device: str, clip: bool) -> list[tuple[float, float]]:
    """forward + backward (+ clip_grad_norm_ to 1.0, as the loop's config) + AdamW of the same UNet and batch
    (torch's fused kernel where the device has one, as the loop's default)."""
    from tunelab.models.text_conditioning import encode_prompts, sdxl_time_ids

    c = components(device)
    data = items(batch)
    with torch.no_grad():
        e = encode_prompts(c, data["captions"], empty_as_zeros=True)
    unet = c.unet.to(device).train()
    latents = data["latents"].to(device)
    noise = torch.randn_like(latents)
    t = torch.randint(0, 1000, (batch,), device=device)
    size = torch.tensor([[32, 32]] * batch)
    cond = {"text_embeds": e.pooled_prompt_embeds.to(device),
            "time_ids": sdxl_time_ids(size, torch.zeros_like(size), size).to(device)}
    embeds = e.prompt_embeds.to(device)
    fused = device in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.01, fused=fused or None)
    stamps = [clock()]
    for _ in range(steps):
        prediction = unet(latents + noise, t, encoder_hidden_states=embeds, added_cond_kwargs=cond).sample
        torch.nn.functional.mse_loss(prediction.float(), noise.float()).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(clock())
    return deltas(stamps)


def cache_variant(args) -> None:
    """One variant of parts 2 and 3 (cached | encode | compile), in this (fresh) process; prints a JSON line."""
    train = {"compile": True, "compile_backend": args.backend} if args.variant == "compile" else {}
    with tempfile.TemporaryDirectory() as tmp:
        times, run = loop_steps(args.steps, args.batch, args.device, args.variant != "encode", Path(tmp), **train)
        process_peak = peak_rss()  # the final checkpoint included
    te_bytes = sum(p.numel() * p.element_size() for m in run.components.text_encoders for p in m.parameters())
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else run.peak_rss
    clock = getattr(run, "compile_clock", None)
    cache_bytes = sum(t.numel() * t.element_size() for t in run.batches.items.values()
                      if torch.is_tensor(t) and t is not run.batches.items["latents"])  # cached text embeddings
    print(json.dumps({"step_s": statistics.median(t[0] for t in times[2:]),
                      "step_cpu_s": statistics.median(t[1] for t in times[2:]), "peak_bytes": peak,
                      "process_peak_bytes": process_peak, "weights_held": run.weights_held, "te_bytes": te_bytes,
                      "compile_s": clock.seconds if clock is not None else 0.0, "steps": len(times),
                      "cache_bytes": cache_bytes}))


def peak_rss() -> int:
    """This process's peak RSS in bytes: Linux's VmHWM (ru_maxrss of a child started by a large parent counts the
    parent's memory at fork: part 3's runs would show this script's own models)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def variant_process(variant: str, args, env: dict | None = None) -> dict:
    """`variant` run in a fresh process (clean peak memory); its JSON line."""
    command = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--batch",
               str(args.batch), "--device", args.device, "--threads", str(args.threads), "--backend", args.backend]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile-rounds", type=int, default=1)
    parser.add_argument("--backend", default="inductor", help="train.compile_backend of part 3")
    parser.add_argument("--variant", choices=["cached", "encode", "compile"])  # internal: parts 2-3 subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variant:
        return cache_variant(args)

    print(f"device {args.device}, threads {args.threads}, tiny SDXL UNet, batch {args.batch}, 8x8 latents")
    loop, bare, unclipped = [], [], []
    for r in range(args.rounds):  # interleaved, so machine load hits all alike
        with tempfile.TemporaryDirectory() as tmp:
            loop += loop_steps(args.steps, args.batch, args.device, True, Path(tmp))[0][2:]
        bare += bare_steps(args.steps, args.batch, args.device, clip=True)[2:]
        unclipped += bare_steps(args.steps, args.batch, args.device, clip=False)[2:]
    for kind, k in (("CPU", 1), ("wall", 0)):
        loop_s, bare_s, unclipped_s = (statistics.median(t[k] for t in x) for x in (loop, bare, unclipped))
        print(f"1. median step ({kind}): loop {1000 * loop_s:.1f} ms | bare fwd+bwd+clip+AdamW {1000 * bare_s:.1f} ms"
              f" | bare fwd+bwd+AdamW {1000 * unclipped_s:.1f} ms")
        print(f"   loop / bare = {loop_s / bare_s:.3f} (target <= 1.03); loop / bare without clipping = "
              f"{loop_s / unclipped_s:.3f}  (max_grad_norm = 1.0 in the loop's config)")

    runs = {"cached": [], "encode": []}
    for r in range(args.rounds):  # each variant in a fresh process (peak memory), alternating (load)
        for variant in runs:
            runs[variant].append(variant_process(variant, args))
    results = {variant: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for variant, rs in runs.items()}
    cached, encode = results["cached"], results["encode"]
    te_mb = encode["te_bytes"] / 2**20
    memory_kind = "max allocated" if args.device == "cuda" else "max RSS during training"
    for kind, key in (("CPU", "step_cpu_s"), ("wall", "step_s")):
        print(f"2. TE frozen ({kind}): cached embeddings {args.batch / cached[key]:.1f} img/s, encoding each step "
              f"{args.batch / encode[key]:.1f} img/s, cached/encoding images/s = {encode[key] / cached[key]:.2f}x")
    print(f"   model weights in memory while training: cached {cached['weights_held'] / 2**20:.1f} MB, encoding "
          f"{encode['weights_held'] / 2**20:.1f} MB, difference "
          f"{(encode['weights_held'] - cached['weights_held']) / 2**20:.1f} MB")
    print(f"   peak memory ({memory_kind}): cached {cached['peak_bytes'] / 2**20:.1f} MB, "
          f"encoding {encode['peak_bytes'] / 2**20:.1f} MB, difference "
          f"{(encode['peak_bytes'] - cached['peak_bytes']) / 2**20:.1f} MB; text encoders {te_mb:.1f} MB "
          f"(target: difference >= their size)")

    compiled = {"eager": [], "compile": []}
    for r in range(args.compile_rounds):
        compiled["compile"].append(variant_process("compile", args))
        compiled["eager"].append(variant_process("cached", args))
    for variant, rs in compiled.items():
        step, cpu = (statistics.median(r[k] for r in rs) for k in ("step_s", "step_cpu_s"))
        print(f"3. compile {'on ' if variant == 'compile' else 'off'}: compile time "
              f"{statistics.median(r['compile_s'] for r in rs):.1f} s, steady state {args.batch / step:.1f} img/s "
              f"(wall), {args.batch / cpu:.1f} img/s (CPU), process peak RSS "
              f"{statistics.median(r['process_peak_bytes'] for r in rs) / 2**20:.0f} MB, n={len(rs)}")


if __name__ == "__main__":
    main()
