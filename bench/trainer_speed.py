"""Issue 16 side by side, >= 300 steps a run: today's trainer (the tree at a git revision before the issue's step
changes), the trainer now with its defaults (fused AdamW, compile off), the same with train.compile on, and a bare
forward + backward + clip + fused AdamW loop of the same UNet and batch; then peak memory with cached text embeddings
(encoders offloaded, streamed into the checkpoint) against live encoders, and today's trainer with the cache.

Tiny SDXL (UNet 5.5 M parameters), 8x8 latents, cached embeddings unless said. Every run is a fresh process (clean
peak memory, no compile cache in memory); variants alternate round by round, so machine load hits all alike.
Steady state = median step after the first two (a compiled run's compile happens in those); images/s from wall time
and from process CPU time (one thread: the work done, which other processes' load barely changes). Peak memory:
the process's maximum RSS (kernel high-water mark, VmHWM), the final checkpoint included.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_speed.py [--steps 300] [--rounds 3] [--batch 4]
        [--baseline 96488d6^] [--compile-rounds 1] [--backend inductor]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STEP_BENCH = HERE / "train_step.py"


def baseline_source(revision: str, into: Path) -> Path:
    """`src/` of the repository at `revision`, unpacked into `into` (the working tree is not touched)."""
    archive = subprocess.run(["git", "archive", revision, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_variant(variant: str, args, *, source: Path | None = None, cache_dir: Path | None = None) -> dict:
    """One run in a fresh process: train_step.py's variant (cached | encode | compile), or the bare loop."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    if source is not None:  # today's trainer: its package first on the path
        env["PYTHONPATH"] = str(source)
    if cache_dir is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    if variant == "bare":
        command = [sys.executable, __file__, "--bare-worker"]
    else:
        command = [sys.executable, str(STEP_BENCH), "--variant", variant]
    command += ["--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
    if variant == "compile":
        command += ["--backend", args.backend]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bare_worker(args) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from train_step import bare_steps, peak_rss

    torch.set_num_threads(args.threads)
    times = bare_steps(args.steps, args.batch, "cpu", clip=True)
    print(json.dumps({"step_s": statistics.median(t[0] for t in times[2:]),
                      "step_cpu_s": statistics.median(t[1] for t in times[2:]), "compile_s": 0.0,
                      "process_peak_bytes": peak_rss()}))


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    low, middle, high = (fmt.format(f(values)) for f in (min, statistics.median, max))
    return f"{middle} [{low}-{high}], n={len(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default="96488d6^", help="git revision of 'today's trainer'")
    parser.add_argument("--compile-rounds", type=int, default=1)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--bare-worker", action="store_true")  # internal
    args = parser.parse_args()
    if args.bare_worker:
        return bare_worker(args)

    print(f"tiny SDXL, batch {args.batch}, {args.steps} steps a run, {args.threads} thread(s), today's trainer = "
          f"{args.baseline}; load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        today_src = baseline_source(args.baseline, Path(tmp))
        runs: dict[str, list[dict]] = {"today": [], "default": [], "bare": [], "live": [], "compile": []}
        for r in range(max(args.rounds, args.compile_rounds)):
            if r < args.rounds:
                runs["today"].append(run_variant("cached", args, source=today_src))
                runs["default"].append(run_variant("cached", args))
                runs["bare"].append(run_variant("bare", args))
                runs["live"].append(run_variant("encode", args))
            if r < args.compile_rounds:  # a fresh inductor cache in round 1 (cold compile), reused after
                runs["compile"].append(run_variant("compile", args, cache_dir=Path(tmp) / "inductor"))
            print(f"  round {r + 1} done, load average {os.getloadavg()[0]:.1f}", flush=True)

    print(f"\nsteady-state images/s (median [min-max], n runs; each run's value is its median step):")
    for name, label in (("today", "today's trainer"), ("default", "trainer now, defaults (fused AdamW, compile off)"),
                        ("compile", f"trainer now, compile on ({args.backend})"),
                        ("bare", "bare fwd + bwd + clip + fused AdamW"), ("live", "trainer now, live text encoders")):
        rs = runs[name]
        if not rs:
            continue
        print(f"  {label}: wall {spread([args.batch / r['step_s'] for r in rs])} | CPU "
              f"{spread([args.batch / r['step_cpu_s'] for r in rs])}")
    for kind, key in (("wall", "step_s"), ("CPU", "step_cpu_s")):
        paired = [t[key] / d[key] for t, d in zip(runs["today"], runs["default"])]
        bare = [b[key] / d[key] for b, d in zip(runs["bare"], runs["default"])]
        print(f"  now / today ({kind}, paired by round): {spread(paired, '{:.3f}')} (target >= 1.2); "
              f"now / bare: {spread(bare, '{:.3f}')}")
    if runs["compile"]:
        compile_s = [r["compile_s"] for r in runs["compile"]]
        print(f"  compile time: {', '.join(f'{s:.1f} s' for s in compile_s)} (round 1: cold inductor cache)")
        for kind, key in (("CPU", "step_cpu_s"), ("wall", "step_s")):
            gain = (statistics.median(r[key] for r in runs["default"])
                    - statistics.median(r[key] for r in runs["compile"]))  # seconds a step saved by compiling
            print(f"  compiled step - eager step ({kind}): {-1000 * gain:+.1f} ms; "
                  + (f"the cold compile pays for itself after {compile_s[0] / gain:.0f} steps, the warm one after "
                     f"{compile_s[-1] / gain:.0f}" if gain > 0 else "compiling never pays here"))

    print("\npeak memory (process max RSS, final checkpoint included; median [min-max], n):")
    te_mb = runs["default"][0]["te_bytes"] / 2**20
    peaks = {name: [r["process_peak_bytes"] / 2**20 for r in runs[name]] for name in ("today", "default", "live")}
    print(f"  cached embeddings, trainer now: {spread(peaks['default'])} MB")
    print(f"  cached embeddings, today's trainer: {spread(peaks['today'])} MB")
    print(f"  live text encoders, trainer now: {spread(peaks['live'])} MB")
    saved = statistics.median(peaks["live"]) - statistics.median(peaks["default"])
    print(f"  live - cached (now): {saved:.1f} MB; text encoders {te_mb:.1f} MB (target: >= their size); "
          f"today - now (cached): {statistics.median(peaks['today']) - statistics.median(peaks['default']):.1f} MB")
    print(f"  (the cached runs hold their whole embedding cache in memory here: "
          f"{runs['default'][0]['cache_bytes'] / 2**20:.2f} MB; a real run reads it from shards per batch)")


if __name__ == "__main__":
    main()
