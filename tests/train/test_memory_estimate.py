"""The dry run's memory estimate (issue 13) against what really happens on tiny models: optimizer states against
the states a real optimizer step allocates, activations + gradients against the live bytes of a real forward and
backward pass (tracked tensor by tensor), with and without gradient checkpointing; and the dry run's output."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.models.io import load_model_structure, save_model
from tunelab.models.tiny import tiny_sdxl
from tunelab.train.config import RunConfig
from tunelab.train.memory_estimate import estimate_memory, unet_inputs
from tunelab.train.optim import build_optimizer
from tunelab.train.parameters import parameter_groups, plan_trainable


def run_config(**tables) -> RunConfig:
    base = {"model": {"path": "unused"}, "train": {"max_steps": 1, "batch_size": 2}, "unet": {"preset": "full"}}
    for name, table in tables.items():
        base[name] = {**base.get(name, {}), **table}
    return RunConfig.model_validate(base)


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage created by torch ops and still alive; `peak` is the most at any moment. Storages that
    existed before (`existing`: weights, inputs) are not counted when an op returns a view of them."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live, self.peak = 0, 0
        self.seen = {t.untyped_storage().data_ptr() for t in existing}

    def _freed(self, key, size):
        self.seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def measured_backward_peak(components, config, side: int) -> int:
    """A real fp32 forward + backward of the UNet on CPU, as the trainer runs it; live bytes tracked throughout."""
    plan = plan_trainable(components, config)
    plan.apply()
    unet = components.unet.train()
    if config.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    inputs = unet_inputs(unet, (side, side), config.train.batch_size, torch.float32, unet.config.cross_attention_dim, False)
    real = {k: torch.randn(v.shape) for k, v in inputs.items() if k not in ("added_cond_kwargs", "timestep")}
    real["timestep"] = torch.full((config.train.batch_size,), 500)
    real["added_cond_kwargs"] = {k: torch.randn(v.shape) for k, v in inputs["added_cond_kwargs"].items()}
    existing = [*unet.parameters(), *unet.buffers(), *real.values(), *real["added_cond_kwargs"].values()]
    with LiveBytes([t for t in existing if isinstance(t, torch.Tensor)]) as tracker:
        unet(**real).sample.float().square().mean().backward()
    return tracker.peak


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_activations_and_gradients_match_a_real_backward_pass(checkpointing):
    """Estimate (meta forward, timeline walked backwards) within 25 % of the live bytes of the real pass; and
    checkpointing cuts the activations."""
    components = tiny_sdxl(sample_size=32)
    config = run_config(train={"gradient_checkpointing": checkpointing})
    plan = plan_trainable(components, config)
    estimate = estimate_memory(components, plan, config)
    activations, grads = estimate.backward[checkpointing]
    measured = measured_backward_peak(components, config, 32)
    assert 0.75 <= (activations + grads) / measured <= 1.25, (activations, grads, measured)
    assert estimate.activations[True] < 0.6 * estimate.activations[False]
    assert estimate.resolution == (32 * 4, 32 * 4)  # tiny VAE: factor 4


@pytest.mark.parametrize("kind", ["adamw", "adafactor", "lion"])
def test_optimizer_states_match_what_a_real_step_allocates(kind):
    """bf16 weights: AdamW's and Lion's states are bf16 too, Adafactor's fp32."""
    components = tiny_sdxl().to(dtype=torch.bfloat16)
    config = run_config(optimizer={"type": kind}, unet={"preset": "attn-mlp"}, model={"dtype": "bf16"})
    plan = plan_trainable(components, config)
    plan.apply()
    optimizer = build_optimizer(parameter_groups(plan), config.optimizer)
    for p in plan.parts["unet"].parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    allocated = sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
                    if isinstance(v, torch.Tensor) and v.ndim > 0)  # 0-d step counters aside
    estimate = estimate_memory(components, plan, config)
    assert estimate.optimizers[kind][0].bytes == allocated
    assert estimate.gradients == sum(p.numel() for p in plan.parts["unet"].parameters()) * 2


def test_estimate_follows_the_config():
    """Twice the batch: about twice the activations; cached text embeddings: frozen encoders not held; bf16 weights
    half of fp32; the data's bucket resolution is the one estimated; 8-bit AdamW states about a quarter of AdamW's."""
    components = tiny_sdxl(sample_size=32)
    one = estimate_memory(components, plan_trainable(components, run_config()), run_config())
    two_config = run_config(train={"batch_size": 4})
    two = estimate_memory(components, plan_trainable(components, two_config), two_config)
    assert 1.8 <= two.activations[False] / one.activations[False] <= 2.05
    weights = {p.name: p.bytes for p in one.weights}
    assert weights["text_encoder_2"] == 4 * sum(p.numel() for p in components.text_encoders[1].parameters())
    cached_config = run_config(model={"dtype": "bf16"}).model_copy(update={"data": _data_with_cache()})
    cached = estimate_memory(components, plan_trainable(components, cached_config), cached_config)
    held = {p.name: p.bytes for p in cached.weights}
    assert held["text_encoder"] == held["text_encoder_2"] == 0 and held["unet"] * 2 == weights["unet"]
    assert cached.text_encoders_held[False] * 2 == weights["text_encoder"] + weights["text_encoder_2"]
    assert cached.resolution == (128, 128) and cached.peak() < one.peak()
    # sd-scripts' "resolution = [width, height]": that area, not a crash
    wide_config = cached_config.model_copy(update={"data": _data_with_cache(resolution=[128, 96])})
    wide = estimate_memory(components, plan_trainable(components, wide_config), wide_config)
    assert wide.resolution == (128, 96) and "at 128x96, batch" in wide.format()
    assert 0.65 <= wide.activations[False] / cached.activations[False] <= 0.85  # 96 / 128 of the pixels
    adamw, adamw8bit = one.optimizers["adamw"][0].bytes, one.optimizers["adamw8bit"][0].bytes
    assert 0.2 < adamw8bit / adamw < 0.5  # 1 byte vs 4 per state; small tensors keep fp32 states


def _data_with_cache(resolution=128):
    from tunelab.data.config import DataConfig

    return DataConfig.model_validate({"sources": [{"type": "folder", "path": "images"}],
                                      "buckets": {"resolution": resolution, "step": 8, "min_side": 64, "max_side": 256},
                                      "cache": {"latents": True, "text_embeddings": True}})


def test_dry_run_prints_the_estimate_without_loading_weights(tmp_path):
    """The dry run reads the model as structure (meta): the same table and estimate as from the loaded model; a
    folder missing a weight is still refused, from the headers."""
    model = tiny_sdxl()
    save_model(model, tmp_path / "base")
    (tmp_path / "run.toml").write_text('[model]\npath = "base"\n[train]\nmax_steps = 5\nbatch_size = 2\n'
                                       'gradient_checkpointing = true\n[optimizer]\ntype = "adafactor"\n')
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.toml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    structure = load_model_structure(tmp_path / "base")
    assert all(p.device.type == "meta" for m in structure.named_parts().values() for p in m.parameters())
    config = run_config(train={"gradient_checkpointing": True}, optimizer={"type": "adafactor"})
    expected = estimate_memory(model, plan_trainable(model, config), config)
    assert expected.format() in result.output
    for line in ("estimated peak", "dominated by:", "gradient checkpointing on / off", "other optimizers, peak: adamw"):
        assert line in result.output
    weights = tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    del tensors["conv_in.bias"]
    save_file(tensors, str(weights))
    broken = CliRunner().invoke(app, ["train", str(tmp_path / "run.toml"), "--dry-run"])
    assert broken.exit_code != 0 and "missing weight conv_in.bias" in str(broken.exception or broken.output)
