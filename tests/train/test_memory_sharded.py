"""The dry run's memory estimate per process of an FSDP run (train/memory_sharded.py) against what a real sharded
run holds: 2 gloo processes (this file run under torch.distributed.run) train the small SDXL one step with the UNet
and both text encoders sharded, and measure the storage each process actually holds for its weight shards, its
gradient shards (at the optimizer step), its optimizer states, and the most weights gathered at once; and the
`--shards` dry run's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sdxl
from tunelab.train.config import RunConfig
from tunelab.train.fsdp import FsdpSettings
from tunelab.train.memory_estimate import estimate_memory, gib
from tunelab.train.memory_sharded import prints_for_the_launch, shard_groups
from tunelab.train.parameters import plan_trainable
from tunelab.train.recipe import dry_run

PROCESSES = 2
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP",
            "FSDP_MIN_NUM_PARAMS": "20000", "FSDP_RESHARD_AFTER_FORWARD": "true"}  # what accelerate launch sets


def sharded_config(output_dir: Path) -> dict:
    from tiny_run import base_config

    return base_config(output_dir, train={"max_steps": 1, "batch_size": 2, "mixed_precision": "bf16"},
                       text_encoder={"mode": "on"})


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors` (DTensors: their local shard), as allocated (padding too)."""
    storages = {}
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        storages[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
    return sum(storages.values())


class GatheredPeak:
    """The most bytes of gathered (unsharded) weights allocated at once (`peak`; `peaks`: of each module alone),
    sampled before and after every module's forward and whenever a module's output gradient arrives in backward."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules, self.peak = modules, 0
        self.peaks = dict.fromkeys(modules, 0)
        for module in modules.values():
            for sub in module.modules():
                sub.register_forward_pre_hook(lambda *_: self.sample())
                sub.register_forward_hook(self.in_backward_too)

    def in_backward_too(self, module, args, output) -> None:
        self.sample()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self.sample())

    def sample(self) -> None:
        from torch.distributed.fsdp import FSDPModule

        held = {}
        for name, module in self.modules.items():
            groups = [m._get_fsdp_state()._fsdp_param_group for m in module.modules() if isinstance(m, FSDPModule)]
            held[name] = sum(t.untyped_storage().nbytes() for g in groups if g is not None
                             for p in g.fsdp_params for t in p.all_gather_outputs)
            self.peaks[name] = max(self.peaks[name], held[name])
        self.peak = max(self.peak, sum(held.values()))


def measure_sharded_step(output: Path) -> None:
    """One process of the 2-process run: the estimate for its config, then what it really holds."""
    from accelerate import PartialState
    from tiny_run import small_sdxl, tiny_items

    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.recipe import run_training

    torch.set_num_threads(1)
    config = RunConfig.model_validate(sharded_config(output / "run"))
    components = small_sdxl()
    plan = plan_trainable(components, config)
    estimate = estimate_memory(components, plan, config, PROCESSES, FsdpSettings.from_launch())
    modules = {name: part.module for name, part in plan.parts.items()}
    gathered = GatheredPeak(modules)
    measured = {}

    def at_step(optimizer, args, kwargs) -> None:
        measured["gradients"] = storage_bytes(p.grad for g in optimizer.param_groups for p in g["params"])

    def after_step(optimizer, args, kwargs) -> None:
        measured["optimizer states"] = storage_bytes(v for s in optimizer.state.values() for v in s.values()
                                                     if isinstance(v, torch.Tensor) and v.ndim > 0)

    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(at_step)
    register_optimizer_step_post_hook(after_step)
    state = PartialState(cpu=True)
    batches = InMemoryBatches(tiny_items(8), batch_size=config.train.batch_size, seed=config.train.seed,
                              rank=state.process_index, world_size=state.num_processes)
    run_training(config, components=components, batches=batches)
    measured.update({f"weights {name}": storage_bytes(m.parameters()) for name, m in modules.items()})
    measured.update({"gathered": gathered.peak, "gathered unet": gathered.peaks["unet"]})
    estimated = {f"weights {p.name}": p.bytes for p in estimate.weights if p.name in modules}
    estimated.update({"gradients": estimate.gradients, "optimizer states": estimate.optimizers["adamw"][0].bytes,
                      "gathered": sum(p.bytes for p in estimate.gathered),
                      "gathered unet": next(p.bytes for p in estimate.gathered if p.name == "unet")})
    result = {"measured": measured, "estimated": estimated, "groups": sum(
        len(shard_groups(m, plan.parts[n].trainable, FsdpSettings.from_launch())) for n, m in modules.items())}
    (output / f"rank{state.process_index}.json").write_text(json.dumps(result))


def test_sharded_estimate_matches_what_two_fsdp_processes_hold(tmp_path):
    """Weight shards, gradient shards and AdamW states: exactly the bytes each of 2 gloo processes allocates (the
    padded first chunk of every parameter; the second process's optimizer states, unpadded, may be a little less).
    Gathered weights: at least the most a process held at once (on CPU FSDP gathers nothing ahead in forward)."""
    env = {**os.environ, **FSDP_ENV, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               str(PROCESSES), __file__, str(tmp_path)], env=env, cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(PROCESSES)]
    for rank, result in enumerate(ranks):
        measured, estimated = result["measured"], result["estimated"]
        print(f"rank {rank} ({result['groups']} shard groups):",
              {k: (estimated[k], measured[k]) for k in estimated})
        for key in ("weights unet", "weights text_encoder", "weights text_encoder_2", "gradients"):
            assert measured[key] == estimated[key], (rank, key, measured[key], estimated[key])
        states = measured["optimizer states"] / estimated["optimizer states"]
        assert states == 1 if rank == 0 else 0.97 <= states <= 1, (rank, states)
        assert 0.9 * estimated["gathered"] <= measured["gathered"] <= estimated["gathered"], (rank, result)
        # the UNet's part (root group, deepest chain, one group ahead): an upper bound on CPU, which prefetches less
        assert 0.3 * estimated["gathered unet"] <= measured["gathered unet"] <= estimated["gathered unet"], (rank, result)


def test_dry_run_with_shards_prints_per_process_numbers_that_follow_n(tmp_path):
    """`tunelab train RUN.toml --dry-run --shards 8`: per process, beside the unsharded peak, and smaller; the trained
    parts' weight shards, gradients and optimizer states ~1/N of the unsharded ones; frozen parts whole."""
    model = tiny_sdxl()
    save_model(model, tmp_path / "base")
    (tmp_path / "run.toml").write_text('[model]\npath = "base"\n[train]\nmax_steps = 5\nbatch_size = 2\n'
                                       'mixed_precision = "bf16"\n')
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.toml"), "--dry-run", "--shards", "8"])
    assert result.exit_code == 0, result.output
    assert "memory estimate (per process, sharded over 8 processes (FSDP 2, shard groups of > 1,000,000" in result.output
    config = RunConfig.model_validate({"model": {"path": "base"}, "train": {"max_steps": 5, "batch_size": 2,
                                                                            "mixed_precision": "bf16"}})
    plan = plan_trainable(model, config)
    estimates = {n: estimate_memory(model, plan, config, n) for n in (1, 2, 8)}
    assert estimates[8].format() in result.output
    unsharded = next(line for line in result.output.splitlines() if "unsharded (DDP) peak" in line)
    assert gib(estimates[1].peak()) in unsharded
    assert estimates[8].peak() < estimates[2].peak() < estimates[1].peak()
    weights = {n: {p.name: p.bytes for p in e.weights} for n, e in estimates.items()}
    for n in (2, 8):
        assert 1 <= n * weights[n]["unet"] / weights[1]["unet"] < 1.01  # padding: chunks as large as the first
        assert 1 <= n * estimates[n].gradients / estimates[1].gradients < 1.01
        assert 1 <= n * estimates[n].optimizers["adamw"][0].bytes / estimates[1].optimizers["adamw"][0].bytes < 1.01
        assert weights[n]["vae"] == weights[1]["vae"] and weights[n]["text_encoder"] == weights[1]["text_encoder"]
    others = next(line for line in result.output.splitlines() if "other optimizers, peak" in line)
    assert "lion" in others and "adamw8bit" not in others and "adafactor" not in others  # FSDP refuses them
    refused = CliRunner().invoke(app, ["train", str(tmp_path / "run.toml"), "--shards", "8"])
    assert isinstance(refused.exception, TunelabError) and "--shards goes with --dry-run" in str(refused.exception)
    (tmp_path / "adafactor.toml").write_text((tmp_path / "run.toml").read_text() + '[optimizer]\ntype = "adafactor"\n')
    adafactor = CliRunner().invoke(app, ["train", str(tmp_path / "adafactor.toml"), "--dry-run", "--shards", "8"])
    assert adafactor.exit_code == 0 and "optimizer.type 'adafactor' is refused with FSDP" in adafactor.output


def test_dry_run_under_an_fsdp_launch_takes_its_processes_and_wrapping(tmp_path, monkeypatch):
    """Under `accelerate launch` with an FSDP config: the launch's WORLD_SIZE and wrapping, printed by rank 0 only;
    under a DDP launch (no FSDP variables) the estimate stays unsharded."""
    model = tiny_sdxl()
    config = RunConfig.model_validate({"model": {"path": "base"}, "train": {"max_steps": 5}})
    assert "sharded over" not in dry_run(config, model)
    for variable, value in {**FSDP_ENV, "WORLD_SIZE": "4", "RANK": "1"}.items():
        monkeypatch.setenv(variable, value)
    assert "per process, sharded over 4 processes (FSDP 2, shard groups of > 20,000 parameters)" in dry_run(config, model)
    assert "sharded over 16 processes" in dry_run(config, model, shards=16)
    assert not prints_for_the_launch()


if __name__ == "__main__":  # one process of test_sharded_estimate_matches_what_two_fsdp_processes_hold
    sys.path.insert(0, str(Path(__file__).parent))
    measure_sharded_step(Path(sys.argv[1]))
