"""The cheaper optimizer step (issue 16): fused / foreach AdamW follow torch's per-tensor loop, Lion's multi-tensor
step follows its per-parameter formula, and without clipping the gradient norm is measured only when logged."""

import pytest
import torch
from tiny_run import base_config, small_sdxl, tiny_items

from tunelab.errors import TunelabError
from tunelab.report.training_curves import read_run_curves
from tunelab.train.batches import InMemoryBatches
from tunelab.train.config import OptimizerConfig, RunConfig
from tunelab.train.loop import gradient_norm_needed
from tunelab.train.optim import Lion, build_optimizer
from tunelab.train.recipe import run_training


def parameter_groups(device="cpu"):
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (4, 4, 3, 3)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(device)) for s in shapes]
    return [{"params": params[:2], "lr": 1e-2, "name": "unet"}, {"params": params[2:], "lr": 3e-3, "name": "te"}]


def steps(optimizer, groups, count=5):
    g = torch.Generator().manual_seed(1)
    for _ in range(count):
        for group in groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for group in groups for p in group["params"]]


@pytest.mark.parametrize("implementation", ["auto", "fused", "foreach"])
def test_adamw_implementations_follow_the_per_tensor_loop(implementation):
    reference_groups, groups = parameter_groups(), parameter_groups()
    reference = steps(build_optimizer(reference_groups, OptimizerConfig(implementation="loop")), reference_groups)
    optimizer = build_optimizer(groups, OptimizerConfig(implementation=implementation))
    if implementation == "auto":  # CPU has a fused AdamW kernel: auto picks it
        assert optimizer.defaults["fused"] is True
    initial = [p.detach() for group in parameter_groups() for p in group["params"]]
    for start, a, b in zip(initial, reference, steps(optimizer, groups)):
        assert (a - start).abs().mean() > 1e-3  # the step moved the weights
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_refused_where_no_kernel_exists():
    groups = parameter_groups("meta")  # no fused kernel for meta tensors: auto falls back to foreach
    assert build_optimizer(groups, OptimizerConfig()).defaults["foreach"] is True
    with pytest.raises(TunelabError, match="fused.*has no kernel"):
        build_optimizer(groups, OptimizerConfig(implementation="fused"))


def test_lion_multi_tensor_step_follows_the_formula():
    groups = parameter_groups()
    expected = [p.detach().clone() for group in groups for p in group["params"]]
    averages = [torch.zeros_like(p) for p in expected]
    beta1, beta2, decay = 0.9, 0.99, 0.1
    optimizer = Lion(groups, betas=(beta1, beta2), weight_decay=decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = []
        for group in groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=g)
                grads.append(p.grad)
        optimizer.step()
        lrs = [group["lr"] for group in groups for _ in group["params"]]
        for i, (grad, lr) in enumerate(zip(grads, lrs)):  # Chen et al. 2023, Algorithm 2
            update = (beta1 * averages[i] + (1 - beta1) * grad).sign()
            expected[i] = expected[i] * (1 - lr * decay) - lr * update
            averages[i] = beta2 * averages[i] + (1 - beta2) * grad
    actual = [p.detach() for group in groups for p in group["params"]]
    assert all(torch.allclose(a, e, atol=1e-6) for a, e in zip(actual, expected))


def test_unclipped_gradient_norm_measured_only_when_logged(tmp_path):
    """max_grad_norm = 0 and logging every 2nd step: the norm is measured at steps 2 and 4 only, logged there with
    the values of a run that measured it every step, and the weights are the same (it never changes the update)."""
    def needed(step, **train):
        config = RunConfig.model_validate(base_config(tmp_path, train={"max_grad_norm": 0.0, **train},
                                                      logging={"log_every_n_steps": 2}))
        return gradient_norm_needed(config, step)

    assert [needed(s) for s in (1, 2, 3, 4)] == [False, True, False, True]
    assert all(needed(s, max_grad_norm=1.0) and needed(s, nonfinite="skip") for s in (1, 3))

    def train(name, every):
        config = RunConfig.model_validate(base_config(
            tmp_path / name, train={"max_steps": 4, "max_grad_norm": 0.0}, text_encoder={"mode": "off"},
            checkpoint={"save_state": False}, logging={"tensorboard": True, "log_every_n_steps": every}))
        components = small_sdxl()
        run_training(config, components=components,
                     batches=InMemoryBatches(tiny_items(), batch_size=config.train.batch_size))
        return components.unet.state_dict(), read_run_curves(tmp_path / name).scalars["grad_norm"]

    sparse, sparse_norms = train("every-2", 2)
    dense, dense_norms = train("every-1", 1)
    assert [s for s, _ in sparse_norms] == [2, 4] and [s for s, _ in dense_norms] == [1, 2, 3, 4]
    assert sparse_norms == [(s, v) for s, v in dense_norms if s % 2 == 0]
    assert all(torch.equal(sparse[k], dense[k]) for k in dense)


def test_clipping_inside_the_fused_step_equals_clipping_the_gradients():
    """Clipping left to the fused kernel (one pass fewer) moves the weights as clipping the gradients does; the
    kernel's divisor holds for one step only."""
    from accelerate import Accelerator

    from tunelab.train.loop import clip_gradients, clip_in_optimizer

    accelerator = Accelerator(cpu=True)
    runs = []
    for inside in (True, False):
        groups = parameter_groups()
        params = [p for group in groups for p in group["params"]]
        optimizer = build_optimizer(groups, OptimizerConfig(implementation="fused"))
        g = torch.Generator().manual_seed(1)
        for scale in (10.0, 0.01, 10.0):  # clipped, not clipped (norm < 1), clipped
            for p in params:
                p.grad = scale * torch.randn(p.shape, generator=g)
            before = [p.grad.clone() for p in params]
            norm = clip_gradients(accelerator, params, 1.0, optimizer if inside else None)
            assert (norm > 1.0) == (scale > 1.0)
            if inside:  # the gradients themselves are left alone
                assert all(torch.equal(a, p.grad) for a, p in zip(before, params))
            optimizer.step()
            clip_in_optimizer(optimizer, None)
        runs.append([p.detach().clone() for p in params])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*runs))
