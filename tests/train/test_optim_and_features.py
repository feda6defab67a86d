"""Optimizers, LR schedules, gradient clipping, and loop features (gradient checkpointing, bf16, samples)."""

import math

import pytest
import torch
from tiny_run import changed

from tunelab.errors import TunelabError
from tunelab.train.config import OptimizerConfig
from tunelab.train.optim import Lion, build_lr_scheduler, build_optimizer, lr_factor


def groups():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(8, 8)), torch.nn.Parameter(torch.randn(8))
    return [{"params": [a], "lr": 1e-2, "name": "unet"}, {"params": [b], "lr": 0.0, "name": "text_encoder"}]


@pytest.mark.parametrize("kind", ["adamw", "adafactor", "lion"])
def test_optimizers_step_each_group_at_its_rate(kind):
    g = groups()
    optimizer = build_optimizer(g, OptimizerConfig(type=kind, weight_decay=0.0))
    before = [p.detach().clone() for group in g for p in group["params"]]
    for group in g:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    optimizer.step()
    after = [p for group in g for p in group["params"]]
    assert not torch.equal(before[0], after[0])
    assert torch.equal(before[1], after[1])  # lr 0 group
    assert [group["name"] for group in optimizer.param_groups] == ["unet", "text_encoder"]


def test_lion_update_is_a_signed_step():
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = Lion([p], lr=0.1)
    p.grad = torch.tensor([2.0, -3.0, 0.5, 0.0])
    optimizer.step()
    assert torch.allclose(p.detach(), torch.tensor([-0.1, 0.1, -0.1, 0.0]))


def test_adamw8bit_on_cpu_says_why():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the CPU message does not apply")
    with pytest.raises(TunelabError, match="adamw8bit needs a CUDA GPU"):
        build_optimizer(groups(), OptimizerConfig(type="adamw8bit"))


def test_warmup_and_decay_schedules():
    warm = OptimizerConfig(lr_scheduler="cosine", warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_factor(s, warm, 14) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(4, warm, 14) == pytest.approx(1.0)
    assert lr_factor(9, warm, 14) == pytest.approx(0.55)  # half way down the cosine, floor 0.1
    assert lr_factor(14, warm, 14) == pytest.approx(0.1)
    linear = OptimizerConfig(lr_scheduler="linear")
    assert lr_factor(5, linear, 10) == pytest.approx(0.5)
    g = groups()
    optimizer = build_optimizer(g, OptimizerConfig())
    scheduler = build_lr_scheduler(optimizer, OptimizerConfig(lr_scheduler="linear"), 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)  # each group scaled from its own base


def test_gradient_clipping_and_norm(train_tiny):
    from accelerate import Accelerator

    from tunelab.train.loop import clip_gradients

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_gradients(Accelerator(cpu=True), [p], 0.0) == pytest.approx(5.0)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))  # no clipping asked: untouched
    assert clip_gradients(Accelerator(cpu=True), [p], 1.0) == pytest.approx(5.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]), atol=1e-5)


def test_gradient_checkpointing_trains_the_same(train_tiny):
    c1, _, _ = train_tiny(train={"max_steps": 2}, text_encoder={"mode": "on"})
    c2, before, _ = train_tiny(train={"max_steps": 2, "gradient_checkpointing": True}, text_encoder={"mode": "on"})
    assert changed(before["unet"], c2.unet)
    for a, b in [(c1.unet, c2.unet), (c1.text_encoders[1], c2.text_encoders[1])]:
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), name


def test_bf16_mixed_precision_and_samples(train_tiny):
    from tunelab.evaluate.infotext import read_png_infotext

    fp32, _, run32 = train_tiny(train={"max_steps": 2})
    c, before, run = train_tiny(train={"max_steps": 2, "mixed_precision": "bf16"},
                                logging={"sample_every_n_steps": 2, "sample_prompts": ["red circle", ""],
                                         "sample_seeds": [1], "sample_steps": 2})
    assert changed(before["unet"], c.unet) == set(before["unet"])  # every UNet tensor moved
    # The same data, seeds and steps as the fp32 run: the loss agrees to bf16's precision, but is not the fp32 number
    # (had the setting been ignored, both runs would be bit-identical).
    assert math.isfinite(run.logger.smoothed) and run.logger.smoothed != run32.logger.smoothed
    assert run.logger.smoothed == pytest.approx(run32.logger.smoothed, rel=0.01)
    assert changed(fp32.unet.state_dict(), c.unet)  # and so are the weights
    assert all(p.dtype == torch.float32 for p in c.unet.parameters())  # bf16 computes; the weights stay fp32
    assert run.accelerator.mixed_precision == "bf16"
    pngs = sorted((run.config.train.output_dir / "samples/step-000002").glob("*.png"))
    assert len(pngs) == 2
    info = read_png_infotext(pngs[0])
    assert info.prompt == "red circle" and info.seed == 1 and info.steps == 2
