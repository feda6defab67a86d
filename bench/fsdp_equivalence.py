"""Sharded training (FSDP 2 under `accelerate launch`) against one process, setting by setting: the same run config
trained by 1 process with the whole global batch and by N processes each holding 1/N of every trained tensor; the
largest difference between their logged losses, and each launch's wall time.

Settings: UNet + both text encoders trained (the default here), gradient checkpointing, attention-only UNet with
frozen text encoders, text encoders only, gradient accumulation with the text encoders stopped half-way, clipping,
torch.compile of the sharded modules, bf16 mixed precision (weights gathered in bf16 under FSDP, against autocast
over fp32 weights in one process: not the same arithmetic, so a larger difference is expected there), Lion (its
update is the sign of a sum: rounding differences near zero flip whole steps, so larger differences there too).

Run: .venv/bin/python bench/fsdp_equivalence.py [--processes 2] [--steps 4] [SETTING ...]
CPU: gloo. On a machine with at least N GPUs the launch uses them (NCCL); accelerate refuses two ranks on one GPU."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOML = """
[model]
path = "base"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
cache = {{ latents = true }}
[train]
output_dir = "{name}"
max_steps = {steps}
batch_size = {batch_size}
{train}
[text_encoder]
mode = "{te_mode}"
learning_rate = 1e-4
{text_encoder}
[unet]
learning_rate = 1e-3
{unet}
[optimizer]
{optimizer}
[checkpoint]
every_n_epochs = 0
[logging]
progress_bar = false
histogram_every_n_steps = 0
"""
FSDP = """
distributed_type: FSDP
num_machines: 1
num_processes: {processes}
main_process_port: 0
mixed_precision: 'no'
use_cpu: {cpu}
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: SIZE_BASED_WRAP
  fsdp_min_num_params: 20000
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
"""
SETTINGS = {  # name: what changes from UNet + text encoders trained
    "unet+te": {},
    "checkpointing": {"train": "gradient_checkpointing = true"},
    "attn-only, te off": {"unet": 'preset = "attn-only"', "te_mode": "off"},
    "te only": {"te_mode": "only"},
    "accumulation 2, te stop": {"train": "gradient_accumulation_steps = 2", "text_encoder": "stop_after_steps = 2"},
    "clip 0.01": {"train": "max_grad_norm = 0.01"},
    "bf16": {"train": 'mixed_precision = "bf16"'},
    "compile": {"train": "compile = true"},
    "lion": {"unet": "", "optimizer": 'type = "lion"'},
}


def losses(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars("loss/raw")]


def setup(folder: Path, processes: int) -> None:
    import torch

    from tunelab.models.io import save_model
    from tunelab.models.tiny import tiny_sdxl
    from tunelab.toy.world import write_dataset

    save_model(tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2), folder / "base")
    write_dataset(folder / "images", "finetune", count=16, progress=False)
    (folder / "fsdp.yaml").write_text(FSDP.format(processes=processes,
                                                  cpu=str(torch.cuda.device_count() < processes).lower()))
    (folder / "prepare.toml").write_text(TOML.format(name="prepare", steps=1, batch_size=1, train="", te_mode="on",
                                                     text_encoder="", unet="", optimizer=""))  # fmt: skip
    subprocess.run([sys.executable, "-m", "tunelab.cli", "prepare", "prepare.toml", "--quiet"], cwd=folder, check=True,
                   capture_output=True)


def train(folder: Path, name: str, command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([*command, f"{name}.toml"], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if "rror" in line]
        raise SystemExit(f"{name} failed: {lines[-1] if lines else done.returncode}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="*", help=f"default: all of {', '.join(SETTINGS)}")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(SETTINGS)}")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        setup(folder, args.processes)
        print(f"{'setting':<26}{'max |loss diff|':>16}{'loss 1 → last':>18}{'1 process s':>13}{'FSDP s':>9}")
        for name in args.settings or SETTINGS:
            change = {"train": "", "unet": "", "text_encoder": "", "te_mode": "on", "optimizer": "", **SETTINGS[name]}
            runs = {}
            for kind, batch_size, command in (
                    ("one", args.processes, [sys.executable, "-m", "tunelab.cli", "train"]),
                    ("sharded", 1, [accelerate, "launch", "--config_file", "fsdp.yaml", "-m", "tunelab.cli", "train"])):
                run = f"{name.replace(' ', '_').replace(',', '')}-{kind}"
                (folder / f"{run}.toml").write_text(TOML.format(name=run, steps=args.steps, batch_size=batch_size,
                                                                **change))
                runs[kind] = (train(folder, run, command), losses(folder / run))
            (t1, one), (tn, sharded) = runs["one"], runs["sharded"]
            assert len(one) == len(sharded) == args.steps, (one, sharded)
            diff = max(abs(a - b) for a, b in zip(one, sharded))
            print(f"{name:<26}{diff:>16.2e}{f'{one[0]:.4f} → {one[-1]:.4f}':>18}{t1:>13.1f}{tn:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
