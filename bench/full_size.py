"""A full-size SDXL single file through tunelab end to end on this machine (issue 13), with wall time and peak RSS of
every stage, each stage its own process (its peak RSS is its own, from wait4).

1. write: the real SDXL architecture (shipped configs) with random fp16 weights, written in the original (LDM) key
   layout without tunelab's metadata: what a user's `sd_xl_base_1.0.safetensors` looks like to the loader.
2. `tunelab info`, loading (fp16 as stored, and cast to bf16): peak RSS ÷ the model's in-memory size (target ≤ 1.25),
   `tunelab convert` to a diffusers folder and back to a single file (compared tensor for tensor with the first).
3. `tunelab prepare` (index + latent and text-embedding caches of a few random 512 px images), `tunelab train
   --dry-run` (its memory estimate), `tunelab train` (a few steps at 512 px, batch 1, UNet preset sdxl-68, bf16
   weights, Adafactor, gradient checkpointing, a single-file checkpoint), and the checkpoint loaded back.

The estimate is for accelerator memory; on CPU everything lives in RAM, so it is compared with the training stage's
peak RSS minus the RSS of a process that only imported the same libraries (Python, torch, diffusers, ...: memory a
GPU run keeps on the host, not on the device).

    .venv/bin/python bench/full_size.py [--workdir /tmp/tunelab-full-size] [--steps 3] [--keep]

Needs ~15 GiB of free memory at the peak and ~30 GB of disk under --workdir; waits (up to 10 min) for 16 GiB to be
available before each heavy stage. Everything under --workdir is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 2**30
HEAVY_FREE_GIB = 16
LIBRARIES = ("import torch, diffusers, transformers, accelerate, safetensors; import tunelab.cli, tunelab.train.recipe, "
             "tunelab.train.loop, tunelab.models.io, tunelab.data.loader")


# ---- parent: stages as processes ------------------------------------------------------------------------------


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def wait_for_memory(stage: str) -> None:
    deadline = time.monotonic() + 600
    while available_gib() < HEAVY_FREE_GIB:
        if time.monotonic() > deadline:
            sys.exit(f"{stage}: less than {HEAVY_FREE_GIB} GiB available for 10 minutes; stopping")
        print(f"  [{stage}: {available_gib():.1f} GiB available, waiting for {HEAVY_FREE_GIB}]", flush=True)
        time.sleep(30)


def run_stage(name: str, argv: list[str], rows: list[dict], heavy: bool = False, env: dict | None = None,
              status: Path | None = None) -> str:
    """Run one stage; its wall time, peak RSS (this process only, from wait4) and stdout's last RESULT line are
    recorded. With `status` (a run's status.json), RSS is also sampled every second and its peak kept per step."""
    if heavy:
        wait_for_memory(name)
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()))
    reader.start()
    by_step: dict[int, int] = {}
    while reader.is_alive():
        if status is not None:
            step = current_step(status)
            by_step[step] = max(by_step.get(step, 0), rss_of(proc.pid))
        reader.join(1.0)
    _, code, usage = os.wait4(proc.pid, 0)
    wall, out = time.perf_counter() - start, "".join(chunks)
    code = os.waitstatus_to_exitcode(code)
    rss = usage.ru_maxrss * 1024  # kB on Linux
    result = {}
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            break
    rows.append({"stage": name, "wall_s": wall, "peak_rss": rss, "exit": code, **result})
    print(f"{name:<34} {wall:>7.1f} s  peak RSS {rss / GIB:>6.2f} GiB  exit {code}"
          + (f"  {json.dumps(result)}" if result else ""), flush=True)
    if by_step:
        print("    sampled RSS peak while at step (0 = before the first step ends): " + ", ".join(
            f"{step}: {value / GIB:.2f} GiB" for step, value in sorted(by_step.items())), flush=True)
    if code != 0:
        print(out[-4000:])
        raise SystemExit(f"stage {name} failed")
    return out


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def current_step(status: Path) -> int:
    try:
        return int(json.loads(status.read_text()).get("step", 0))
    except (OSError, ValueError):
        return 0


def child(*args: str) -> list[str]:
    return [sys.executable, __file__, "--child", *args]


def tunelab(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", *args]


RUN_CONFIG = """
[model]
path = "{model}"
dtype = "bf16"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 512, step = 64, min_side = 256, max_side = 1024 }}
cache = {{ latents = true, text_embeddings = true, dtype = "bfloat16", batch_size = 1 }}
[train]
output_dir = "run"
max_steps = {steps}
batch_size = 1
gradient_checkpointing = true
[unet]
learning_rate = 1e-5
preset = "sdxl-68"
[text_encoder]
mode = "off"
[optimizer]
type = "adafactor"
weight_decay = 0.0
[checkpoint]
format = "single-file"
save_state = false
[logging]
progress_bar = false
tensorboard = true
log_every_n_steps = 1
histogram_every_n_steps = 0
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tunelab-full-size"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--mmap-run", action="store_true", help="train a second time with a fixed malloc mmap threshold")
    parser.add_argument("--reuse", action="store_true", help="keep --workdir's model file from an earlier --keep run")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(CHILDREN[args.child[0]](*args.child[1:])), flush=True)
        return
    work = args.workdir
    single, folder, back = work / "sdxl.safetensors", work / "sdxl-diffusers", work / "sdxl-back.safetensors"
    reuse = args.reuse and single.exists()
    for old in (work.iterdir() if work.exists() else []):
        if not (reuse and old == single):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {available_gib():.1f} GiB available")
    rows: list[dict] = []
    try:
        run_stage("libraries only", [sys.executable, "-c", LIBRARIES], rows)
        if not reuse:
            run_stage("write random fp16 SDXL", child("write", str(single)), rows, heavy=True)
        run_stage("tunelab info", tunelab("info", str(single)), rows)
        for dtype in ("fp16", "bf16"):
            run_stage(f"load single file {dtype}", child("load", str(single), dtype), rows, heavy=True)
        run_stage("convert -> diffusers", tunelab("convert", str(single), str(folder), "--to", "diffusers"), rows,
                  heavy=True)
        run_stage("convert -> single file", tunelab("convert", str(folder), str(back), "--to", "single-file"), rows,
                  heavy=True)
        run_stage("compare round trip", child("compare", str(single), str(back)), rows)
        shutil.rmtree(folder)
        back.unlink()
        (work / "run.toml").write_text(RUN_CONFIG.format(model=single, steps=args.steps))
        run_stage("make images", child("images", str(work / "images"), str(args.images)), rows)
        run_stage("tunelab prepare (caches)", tunelab("prepare", str(work / "run.toml"), "--quiet"), rows, heavy=True)
        out = run_stage("tunelab train --dry-run", tunelab("train", str(work / "run.toml"), "--dry-run"), rows)
        estimate = out[out.index("memory estimate"):]
        print(estimate)
        rows[-1]["estimate_bytes"] = parse_gib(next(l for l in estimate.splitlines() if "estimated peak" in l))
        run_stage(f"tunelab train ({args.steps} steps)", tunelab("train", str(work / "run.toml")), rows, heavy=True,
                  status=work / "run" / "status.json")
        run_stage("step times", child("steps", str(work / "run" / "tensorboard")), rows)
        if args.mmap_run:  # glibc keeps freed blocks below its mmap threshold (up to 32 MB) in its heap; with a
            # fixed 64 kB threshold, freed tensors go back to the system and RSS follows the live tensors
            (work / "run-mmap.toml").write_text(RUN_CONFIG.format(model=single, steps=args.steps).replace(
                'output_dir = "run"', 'output_dir = "run-mmap"'))
            run_stage("tunelab train, mmap threshold 64k", tunelab("train", str(work / "run-mmap.toml")), rows,
                      heavy=True, env={"MALLOC_MMAP_THRESHOLD_": "65536"}, status=work / "run-mmap" / "status.json")
            shutil.rmtree(work / "run-mmap")
        checkpoint = sorted((work / "run" / "checkpoints").glob("step-*"))[-1] / "model.safetensors"
        run_stage("load checkpoint back", child("check", str(checkpoint), str(single)), rows, heavy=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary(rows)


def summary(rows: list[dict]) -> None:
    by = {r["stage"]: r for r in rows}
    base = by["libraries only"]["peak_rss"]
    print("\nstage                          wall s   peak RSS GiB")
    for r in rows:
        print(f"  {r['stage']:<28} {r['wall_s']:>7.1f}   {r['peak_rss'] / GIB:>6.2f}")
    print(f"\nprocess overhead (libraries imported, nothing loaded): {base / GIB:.2f} GiB")
    for dtype in ("fp16", "bf16"):
        r = by[f"load single file {dtype}"]
        print(f"load {dtype}: model in memory {r['model_bytes'] / GIB:.2f} GiB, peak RSS {r['peak_rss'] / GIB:.2f} GiB "
              f"-> ratio {r['peak_rss'] / r['model_bytes']:.3f} "
              f"({'met' if r['peak_rss'] <= 1.25 * r['model_bytes'] else 'NOT MET'}: <= 1.25); without the process overhead "
              f"{(r['peak_rss'] - base) / r['model_bytes']:.3f}; load {r['load_s']:.1f} s")
    train = next(r for r in rows if r["stage"].startswith("tunelab train ("))
    estimate = by["tunelab train --dry-run"]["estimate_bytes"]
    measured = train["peak_rss"] - base
    print(f"train: peak RSS {train['peak_rss'] / GIB:.2f} GiB - overhead {base / GIB:.2f} GiB = {measured / GIB:.2f} "
          f"GiB; dry-run estimate {estimate / GIB:.2f} GiB -> estimate / measured {estimate / measured:.3f} "
          f"({'met' if abs(estimate / measured - 1) <= 0.2 else 'NOT MET'}: within 20 %)")
    if "tunelab train, mmap threshold 64k" in by:
        mmap = by["tunelab train, mmap threshold 64k"]["peak_rss"] - base
        print(f"train with freed blocks returned (mmap threshold 64k): peak RSS - overhead {mmap / GIB:.2f} GiB; "
              f"estimate / measured {estimate / mmap:.3f}")
    print("step times (s): " + ", ".join(f"{t:.1f}" for t in by["step times"]["step_s"])
          + "; losses: " + ", ".join(f"{v:g}" for v in by["step times"]["loss"]))


def parse_gib(line: str) -> int:
    """'  estimated peak   9.87 GiB  (...)' → bytes."""
    words = line.split()
    return int(float(words[words.index("GiB") - 1]) * GIB)


# ---- children ---------------------------------------------------------------------------------------------------


def write_random_sdxl(path: str) -> dict:
    """Full-size SDXL modules with each layer's default initialisation, in fp16, written in the original layout."""
    import torch
    from accelerate import init_empty_weights

    from tunelab.models.config_folders import shipped_configs
    from tunelab.models.ldm_layout import components_to_ldm
    from tunelab.models.safetensors_stream import write_safetensors
    from tunelab.models.single_file import build_modules, empty_components

    torch.manual_seed(0)
    start = time.perf_counter()
    configs = shipped_configs("sdxl")
    with init_empty_weights():
        modules = build_modules("sdxl", configs)
    for module in modules.values():
        for sub in module.modules():
            owned = [(n, p) for n, p in sub._parameters.items() if p is not None]
            for name, p in owned:
                sub._parameters[name] = torch.nn.Parameter(
                    torch.empty(p.shape, dtype=torch.float16).normal_(0, 0.02), requires_grad=False)
            if owned and hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
    components = empty_components("sdxl", configs)
    components.unet, components.vae = modules["unet"], modules["vae"]
    components.text_encoders = [modules["text_encoder"], modules["text_encoder_2"]]
    built = time.perf_counter() - start
    write_safetensors(path, components_to_ldm(components), {"format": "pt"}, dtype=torch.float16)  # as released
    return {"build_s": round(built, 1), "file_GB": round(Path(path).stat().st_size / 1e9, 2),
            "parameters_B": round(sum(p.numel() for m in modules.values() for p in m.parameters()) / 1e9, 3)}


def load(path: str, dtype: str) -> dict:
    import torch

    from tunelab.models.io import load_model

    start = time.perf_counter()
    components = load_model(path, dtype=dtype)
    took = time.perf_counter() - start
    tensors = [t for m in components.named_parts().values() for t in [*m.parameters(), *m.buffers()]]
    assert all(t.dtype == getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[dtype]) for t in tensors
               if t.is_floating_point())
    return {"model_bytes": sum(t.numel() * t.element_size() for t in tensors), "load_s": round(took, 1)}


def compare(a: str, b: str) -> dict:
    import torch

    from tunelab.models.safetensors_stream import SafetensorsReader

    with SafetensorsReader(a) as ra, SafetensorsReader(b) as rb:
        keys = [k for k in ra.keys() if not k.endswith("position_ids")]
        missing = [k for k in keys if k not in rb.entries]
        different = [k for k in keys if k in rb.entries and not torch.equal(ra.read(k), rb.read(k))]
    assert not missing and not different, (missing[:3], different[:3])
    return {"tensors_equal": len(keys)}


def make_images(folder: str, count: str) -> dict:
    import numpy as np
    from PIL import Image

    out = Path(folder)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(int(count)):
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(out / f"{i}.png")
        (out / f"{i}.txt").write_text(f"1girl, solo, red hair, city street, tag{i}")
    return {"images": int(count)}


def step_times(tensorboard: str) -> dict:
    """Seconds per optimizer step from the run's images_per_s scalar (batch 1: 1 / images_per_s); the first step
    also holds the time from the logger's start (setup)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tensorboard)
    events.Reload()
    return {"step_s": [round(1 / e.value, 1) for e in events.Scalars("images_per_s")],
            "loss": [round(e.value, 4) for e in events.Scalars("loss/raw")]}


def check_checkpoint(checkpoint: str, base: str) -> dict:
    """The checkpoint loads (complete, bf16); the trained UNet moved, the frozen text encoders did not."""
    import torch

    from tunelab.models.io import load_model
    from tunelab.models.safetensors_stream import SafetensorsReader

    trained = load_model(checkpoint, dtype="bf16")
    moved = frozen_same = 0
    with SafetensorsReader(checkpoint) as rc, SafetensorsReader(base) as rb:
        for key in rc.keys():
            if key.endswith(("position_ids", "logit_scale")):
                continue
            same = torch.equal(rc.read(key).to(torch.bfloat16), rb.read(key).to(torch.bfloat16))
            if key.startswith("conditioner."):
                frozen_same += same
                assert same, key
            elif key.startswith("first_stage_model."):
                assert same, key
            elif key.startswith("model.diffusion_model.") and not same:
                moved += 1
    assert moved > 0
    return {"unet_tensors_changed": moved, "text_encoder_tensors_unchanged": frozen_same,
            "loaded_parts": list(trained.named_parts())}


CHILDREN = {"write": write_random_sdxl, "load": load, "compare": compare, "images": make_images,
            "steps": step_times, "check": check_checkpoint}


if __name__ == "__main__":
    main()
