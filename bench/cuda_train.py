"""Full-size SDXL training throughput and peak memory on a CUDA GPU, through tunelab's own trainer.

The real SDXL architecture (shipped configs: UNet 2.57 B parameters, CLIP-L + CLIP-G) with random weights — no
download needed; speed and memory do not depend on the weights' values. Each variant runs in its own process (clean
peak-memory counters) through `tunelab.train.recipe.build_run` + `tunelab.train.loop.train`, on cached 1024×1024
latents (128×128×4) and, where the text encoders are frozen, cached text embeddings (encoders not in memory).

    python bench/cuda_train.py [--steps 10] [--warmup 3] [--batch 4] [--variants adamw,adamw8bit,...]

Without CUDA (`--smoke`), the same code path runs on the tiny SDXL on CPU with AdamW variants only, as a check that
the script works; its numbers mean nothing for GPUs.
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

VARIANTS = {
    # name: (optimizer, unet preset, text-encoder mode)
    "adamw": ("adamw", "full", "off"),
    "adamw8bit": ("adamw8bit", "full", "off"),
    "adamw8bit-sdxl71": ("adamw8bit", "sdxl-71", "off"),
    "adamw8bit-te-on": ("adamw8bit", "full", "on"),
}


def full_size_sdxl(device: str):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tunelab.models.components import ModelComponents
    from tunelab.models.config_folders import shipped_configs
    from tunelab.models.tokenizers import clip_tokenizer

    cfg = shipped_configs("sdxl")
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        te1 = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items() if not k.startswith("_")}))
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**{k: v for k, v in cfg["text_encoder_2"].items() if not k.startswith("_")}))
    return ModelComponents("sdxl", unet, vae, [te1, te2], [clip_tokenizer(), clip_tokenizer(pad_token="!")],
                           EulerDiscreteScheduler.from_config(cfg["scheduler"]), source="random full-size SDXL")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_variant(name: str, steps: int, warmup: int, batch: int, smoke: bool = False) -> dict:
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.config import RunConfig
    from tunelab.train.loop import train
    from tunelab.train.recipe import build_run

    optimizer, preset, te_mode = VARIANTS[name]
    if smoke:
        from tunelab.models.tiny import tiny_sdxl

        components, side, width, pooled = tiny_sdxl(), 8, 96, 64
    else:
        components, side, width, pooled = full_size_sdxl("cuda"), 128, 2048, 1280
    count = batch * (steps + warmup)
    g = torch.Generator().manual_seed(0)
    items = {"latents": torch.randn(count, 4, side, side, generator=g),
             "captions": [f"1girl, solo, red hair, city street, masterpiece, tag{i}" for i in range(count)]}
    if te_mode == "off":  # cached text embeddings: the frozen encoders are never held in memory during training
        items["prompt_embeds"] = torch.randn(count, 77, width, generator=g)
        items["pooled_prompt_embeds"] = torch.randn(count, pooled, generator=g)
    tmp = Path(tempfile.mkdtemp())
    config = RunConfig.model_validate({
        "model": {"path": "unused"},
        "train": {"output_dir": str(tmp), "max_steps": steps + warmup, "batch_size": batch,
                  "mixed_precision": "no" if smoke else "bf16", "gradient_checkpointing": True},
        "unet": {"learning_rate": 1e-5, "preset": preset},
        "text_encoder": {"mode": te_mode, "learning_rate": 5e-6},
        "optimizer": {"type": optimizer},
        "checkpoint": {"every_n_epochs": 0, "save_state": False},
        "logging": {"progress_bar": False, "tensorboard": False},
    })
    run = build_run(config, components, InMemoryBatches(items, batch_size=batch))
    trained = sum(p.numel() for g_ in run.optimizer.param_groups for p in g_["params"])
    stamps = []
    original = run.logger.step

    def timed_step(*args, **kwargs):
        sync()
        stamps.append(time.perf_counter())
        return original(*args, **kwargs)

    run.logger.step = timed_step
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(run)
    sync()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    reserved = torch.cuda.max_memory_reserved() if torch.cuda.is_available() else 0
    step_times = [b - a for a, b in zip(stamps, stamps[1:])][warmup - 1:]
    median = statistics.median(step_times)
    return {"variant": name, "optimizer": optimizer, "unet_preset": preset, "text_encoders": te_mode,
            "trained_params_M": round(trained / 1e6, 1), "batch": batch, "median_step_s": round(median, 3),
            "images_per_s": round(batch / median, 2), "peak_alloc_GiB": round(peak / 2**30, 2),
            "peak_reserved_GiB": round(reserved / 2**30, 2),
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny SDXL on CPU: checks the script, not a GPU figure")
    args = parser.parse_args()
    if args.child:
        result = run_variant(args.child, args.steps, args.warmup, args.batch, args.smoke)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or pass --smoke to check the script on CPU")
    device = torch.cuda.get_device_name() if not args.smoke else "cpu (smoke: tiny SDXL)"
    print(f"device: {device}  torch {torch.__version__}")
    results = []
    for name in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                              "--warmup", str(args.warmup), "--batch", str(args.batch)] + (["--smoke"] if args.smoke else []),
                             capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not lines:
            print(f"{name}: failed\n{out.stderr[-3000:]}")
            continue
        results.append(json.loads(lines[0][7:]))
        print(json.dumps(results[-1]), flush=True)
    if not results:
        return
    base = results[0]
    print(f"\n{'variant':<20} {'trained M':>10} {'img/s':>7} {'×' + base['variant']:>12} {'peak GiB':>9} {'Δ GiB':>7}")
    for r in results:
        print(f"{r['variant']:<20} {r['trained_params_M']:>10} {r['images_per_s']:>7} "
              f"{r['images_per_s'] / base['images_per_s']:>12.2f} {r['peak_alloc_GiB']:>9} "
              f"{r['peak_alloc_GiB'] - base['peak_alloc_GiB']:>+7.2f}")


if __name__ == "__main__":
    main()
