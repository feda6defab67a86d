"""The deterministic validation loss: fixed draws per item key, independent of the training RNG, bands, eval mode."""

import torch
from validation_helpers import run_config

from tunelab.validate.loss import band_edges, band_losses, eval_mode, item_draws
from tunelab.validate.sets import ValidationItem
from tunelab.validate.validator import Validator

PROMPTS = ["red, circle, beach", "mira, star quest, forest"]


def items(count: int, seed: int = 0) -> list[ValidationItem]:
    g = torch.Generator().manual_seed(seed)
    captions = ["red, circle", "blue car, night", "", "mira, green eyes"]
    return [ValidationItem(f"item{i}", torch.randn(4, 8, 8, generator=g), captions[i % 4], (32, 32), (0, 0), (32, 32))
            for i in range(count)]


def test_bands_split_the_whole_schedule():
    edges = band_edges(8, 1000)
    assert edges[0][0] == 0 and edges[-1][1] == 1000 and len(edges) == 8
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
    assert [high - low for low, high in band_edges(3, 1000)] == [333, 334, 333]


def test_draws_are_fixed_per_item_key_and_ignore_the_global_rng():
    torch.manual_seed(1)
    t1, n1 = item_draws(0, "a", torch.Size([4, 8, 8]), 8, 1000)
    torch.manual_seed(2)
    torch.randn(1000)
    t2, n2 = item_draws(0, "a", torch.Size([4, 8, 8]), 8, 1000)
    assert torch.equal(t1, t2) and torch.equal(n1, n2)
    for k, (low, high) in enumerate(band_edges(8, 1000)):
        assert low <= t1[k] < high
    t3, n3 = item_draws(0, "b", torch.Size([4, 8, 8]), 8, 1000)
    t4, _ = item_draws(1, "a", torch.Size([4, 8, 8]), 8, 1000)
    assert not torch.equal(n1, n3) and not torch.equal(t1, t3) and not torch.equal(t1, t4)
    assert not torch.equal(n1[0], n1[1])  # each band its own noise


def test_same_model_twice_gives_identical_numbers_whatever_the_training_rng(tmp_path, small_model):
    config = run_config(tmp_path)
    data = items(6)
    torch.manual_seed(0)
    first = band_losses(small_model, data, config, seed=0, bands=8, batch_size=5)
    torch.manual_seed(123)
    torch.rand(777)
    second = band_losses(small_model, data, config, seed=0, bands=8, batch_size=5)
    assert first.shape == (6, 8)
    assert torch.equal(first, second)
    other_seed = band_losses(small_model, data, config, seed=1, bands=8, batch_size=5)
    assert not torch.equal(first, other_seed)


def test_an_items_numbers_do_not_depend_on_the_rest_of_the_set(tmp_path, small_model):
    config = run_config(tmp_path)
    data = items(6)
    together = band_losses(small_model, data, config, seed=0, bands=4, batch_size=8)
    alone = band_losses(small_model, [data[3]], config, seed=0, bands=4, batch_size=8)
    torch.testing.assert_close(alone[0], together[3], rtol=1e-5, atol=1e-6)  # batch composition: float rounding only


def test_loss_is_the_training_definition(tmp_path, small_model):
    """L2 on ε by default; Huber is smaller than L2 on the same draws; v-prediction changes the target."""
    data = items(3)
    l2 = band_losses(small_model, data, run_config(tmp_path), seed=0, bands=4, batch_size=16)
    config = run_config(tmp_path)
    huber = band_losses(small_model, data, config.model_copy(update={"loss": config.loss.model_copy(
        update={"type": "huber", "huber_schedule": "constant", "huber_c": 0.1})}), seed=0, bands=4, batch_size=16)
    v = band_losses(small_model, data, config.model_copy(update={"loss": config.loss.model_copy(
        update={"prediction_type": "v_prediction"})}), seed=0, bands=4, batch_size=16)
    assert (huber < l2).all()
    assert not torch.allclose(v, l2)
    assert (l2 > 0.3).all() and (l2 < 3).all()  # an untrained model's ε-MSE is near 1


def test_eval_mode_is_restored_per_submodule(small_model):
    unet = small_model.unet
    unet.train()
    unet.mid_block.eval()
    with eval_mode(unet):
        assert not any(m.training for m in unet.modules())
    assert unet.training and not unet.mid_block.training and unet.down_blocks[0].training


def test_validator_logs_bands_and_leaves_global_rng_and_train_mode_alone(tmp_path, small_model):
    from torch.utils.tensorboard import SummaryWriter

    config = run_config(tmp_path, retention_prompts=PROMPTS, samples_per_prompt=2, bands=4, every_n_steps=10)
    writer = SummaryWriter(str(tmp_path / "tb"))
    validator = Validator(config, small_model, base=small_model, writer=writer, progress=False)
    assert [s.name for s in validator.sets] == ["retention"] and "held_out" in validator.skipped
    small_model.unet.train()
    state = torch.get_rng_state()
    scalars = validator(small_model, step=10)
    assert torch.equal(state, torch.get_rng_state())
    assert small_model.unet.training
    assert sorted(scalars) == sorted(["val/retention/mean"] + [f"val/retention/band_{k}" for k in range(4)])
    band_mean = sum(scalars[f"val/retention/band_{k}"] for k in range(4)) / 4
    assert abs(scalars["val/retention/mean"] - band_mean) < 1e-6
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/retention/band_3")] == [10]
    assert events.Scalars("val/retention/mean")[0].value == scalars["val/retention/mean"]
    assert [validator.due(s) for s in (5, 10, 20)] == [False, True, True]
    assert validator.due(7, checkpoint=True)


def test_sd15_model_validates_too(tmp_path, tiny_sd15_model):
    config = run_config(tmp_path, retention_prompts=["red, circle"], samples_per_prompt=2, bands=2)
    validator = Validator(config, tiny_sd15_model, base=tiny_sd15_model, progress=False)
    first, second = validator(tiny_sd15_model), validator(tiny_sd15_model)
    assert first == second and set(first) == {"val/retention/mean", "val/retention/band_0", "val/retention/band_1"}


def test_default_cadence_is_in_training_images():
    from tunelab.validate.config import ValidationConfig

    assert [ValidationConfig().cadence(b) for b in (16, 4, 1)] == [500, 2000, 8000]
    assert ValidationConfig(every_n_steps=0).cadence(16) == 0 and ValidationConfig(every_n_steps=7).cadence(4) == 7
