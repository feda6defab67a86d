"""Text-encoder modes, stop_after_steps, partial-UNet selection and the dry-run numbers, on real tiny trainings."""

import json
import re
from pathlib import Path

import pytest
import torch
from tiny_run import changed, small_sdxl

from tunelab.errors import TunelabError
from tunelab.models.tiny import tiny_sdxl
from tunelab.train.config import RunConfig, UNetConfig
from tunelab.train.parameters import format_dry_run, plan_trainable, select_unet_parameters


def test_mode_off_freezes_text_encoders_and_trains_unet(train_tiny):
    c, before, _ = train_tiny(text_encoder={"mode": "off"})
    assert changed(before["text_encoder"], c.text_encoders[0]) == set()
    assert changed(before["text_encoder_2"], c.text_encoders[1]) == set()
    assert len(changed(before["unet"], c.unet)) == len(before["unet"])  # every UNet tensor moved


def test_mode_only_freezes_unet_and_trains_text_encoders(train_tiny):
    c, before, _ = train_tiny(text_encoder={"mode": "only"})
    assert changed(before["unet"], c.unet) == set()
    te1 = changed(before["text_encoder"], c.text_encoders[0])
    # SDXL reads TE1's penultimate layer without the final norm: the last layer and the norm cannot learn.
    assert te1 and all(re.search(r"encoder\.layers\.1\.|final_layer_norm", k) is None for k in te1)
    assert changed(before["text_encoder_2"], c.text_encoders[1])
    assert changed(before["vae"], c.vae) == set()


def test_mode_on_trains_all_and_stop_after_steps_freezes_text_encoders(train_tiny, tmp_path):
    c, before, _ = train_tiny(text_encoder={"mode": "on"})
    assert changed(before["unet"], c.unet) and changed(before["text_encoder"], c.text_encoders[0])
    assert changed(before["text_encoder_2"], c.text_encoders[1])

    # stop after 2 of 4 steps: the text encoders after 4 steps equal those of a 2-step run; the UNet kept training
    checkpoints = {"every_n_steps": 1}
    c4, _, run4 = train_tiny(train={"max_steps": 4}, text_encoder={"mode": "on", "stop_after_steps": 2},
                             checkpoint=checkpoints)
    from safetensors.torch import load_file

    state = Path(run4.config.train.output_dir) / "checkpoints"
    for step in (3, 4):
        for name in ("text_encoder", "text_encoder_2"):
            after_stop = load_file(state / f"step-{step:06d}/state/{name}.safetensors")
            at_stop = load_file(state / f"step-000002/state/{name}.safetensors")
            assert all(torch.equal(after_stop[k], at_stop[k]) for k in at_stop), (name, step)
    unet2 = load_file(state / "step-000002/state/unet.safetensors")
    assert not torch.equal(unet2["conv_in.weight"], c4.unet.state_dict()["conv_in.weight"])
    at1 = load_file(state / "step-000001/state/text_encoder_2.safetensors")
    assert not all(torch.equal(at1[k], v) for k, v in load_file(state / "step-000002/state/text_encoder_2.safetensors").items())


def test_frozen_unet_blocks_stay_bit_identical(train_tiny):
    c, before, run = train_tiny(unet={"preset": "sdxl-68"})
    moved = changed(before["unet"], c.unet)
    frozen = {n for n, _ in c.unet.named_parameters()} - run.plan.parts["unet"].trainable
    assert any(n.startswith("mid_block.resnets.") for n in frozen)
    assert any(".downsamplers." in n for n in frozen)
    assert moved.isdisjoint(frozen)
    assert moved == run.plan.parts["unet"].trainable


def dry_run_percent(text: str, label: str) -> float:
    return float(re.search(rf"^{label}: .*\(([\d.]+) %\)$", text, re.M).group(1))


@pytest.mark.parametrize("unet", [{"preset": "attn-mlp"}, {"preset": "attn-only"}, {"blocks": ["mid_block", "up_blocks.0"]},
                                  {"include": [r"^up_blocks\."], "exclude": [r"\.norm\d?\."]}])
def test_dry_run_percentage_equals_counted(unet):
    c = tiny_sdxl()
    config = RunConfig.model_validate({"model": {"path": "x"}, "train": {"max_steps": 1}, "unet": unet,
                                       "text_encoder": {"mode": "on", "learning_rate_te1": 0.0}})
    plan = plan_trainable(c, config)
    plan.apply()
    text = format_dry_run(plan)
    trainable_unet = sum(p.numel() for p in c.unet.parameters() if p.requires_grad)
    counted = 100 * trainable_unet / sum(p.numel() for p in c.unet.parameters())
    assert dry_run_percent(text, "UNet") == pytest.approx(counted, abs=0.005)
    everything = [p for m in (c.unet, *c.text_encoders) for p in m.parameters()]
    counted_total = 100 * sum(p.numel() for p in everything if p.requires_grad) / sum(p.numel() for p in everything)
    assert dry_run_percent(text, "total") == pytest.approx(counted_total, abs=0.005)
    assert not any(p.requires_grad for p in c.text_encoders[0].parameters())  # TE1 lr 0 = frozen
    assert 0 < trainable_unet < sum(p.numel() for p in c.unet.parameters())


def test_sdxl_presets_train_the_share_their_name_says_on_the_real_sdxl_unet():
    """The practitioner's splits (63, 68 and 71 % of the UNet's parameters), counted on the full-size SDXL UNet (built
    on the meta device): each `sdxl-N` preset trains N % within half a point, and each trains a subset of the next."""
    from diffusers import UNet2DConditionModel

    from tunelab.train.parameters import UNET_PRESETS

    config_path = Path(__import__("tunelab").__file__).parent / "models/configs/sdxl/unet/config.json"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads(config_path.read_text()))
    sizes = dict((n, p.numel()) for n, p in unet.named_parameters())
    total = sum(sizes.values())
    named = sorted((int(name.removeprefix("sdxl-")), name) for name in UNET_PRESETS if name.startswith("sdxl-"))
    assert [share for share, _ in named] == [63, 68, 71]
    trained = {name: select_unet_parameters(unet, UNetConfig(preset=name)) for _, name in named}
    for share, name in named:
        assert 100 * sum(sizes[n] for n in trained[name]) / total == pytest.approx(share, abs=0.5), name
    for (_, smaller), (_, larger) in zip(named, named[1:]):
        assert trained[smaller] < trained[larger], (smaller, larger)
    assert select_unet_parameters(unet, UNetConfig(preset="full")) == set(sizes)


def test_selection_errors_are_one_line():
    c = tiny_sdxl()
    with pytest.raises(TunelabError, match="no UNet module named 'down_blocks.9'"):
        select_unet_parameters(c.unet, UNetConfig(blocks=["down_blocks.9"]))
    with pytest.raises(TunelabError, match="bad regex"):
        select_unet_parameters(c.unet, UNetConfig(include=["(unclosed"]))
    config = RunConfig.model_validate({"model": {"path": "x"}, "train": {"max_steps": 1},
                                       "text_encoder": {"mode": "only", "learning_rate": 0.0}})
    with pytest.raises(TunelabError, match="nothing to train"):
        plan_trainable(c, config)


def test_sd15_with_pixels_instead_of_latents(tmp_path):
    """SD1.5 (one text encoder, no pooled/time ids), pixels encoded by the frozen VAE each step."""
    from tiny_run import base_config

    from tunelab.models.tiny import tiny_sd15
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.recipe import run_training

    c = tiny_sd15(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2)
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in c.named_parts().items()}
    pixels = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    items = {"pixel_values": pixels, "captions": ["red circle"] * 4 + ["blue star"] * 4}
    config = RunConfig.model_validate(base_config(tmp_path / "run", text_encoder={"mode": "on"},
                                                  train={"max_steps": 2}))
    run_training(config, components=c, batches=InMemoryBatches(items, batch_size=4))
    assert changed(before["unet"], c.unet) and changed(before["text_encoder"], c.text_encoders[0])
    assert changed(before["vae"], c.vae) == set()
