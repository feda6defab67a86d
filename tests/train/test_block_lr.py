"""sd-scripts' --block_lr: one learning rate per UNet block in the LDM numbering (SDXL: 23), 0 = frozen."""

import json
from pathlib import Path

import pytest
import torch
from tiny_run import changed, small_sdxl

from tunelab.errors import TunelabError
from tunelab.models.tiny import tiny_sdxl
from tunelab.train.block_lr import block_learning_rates, unet_block_labels, unet_parameter_blocks
from tunelab.train.config import RunConfig
from tunelab.train.parameters import format_dry_run, parameter_groups, plan_trainable


def full_size_sdxl_unet():
    from diffusers import UNet2DConditionModel

    config_path = Path(__import__("tunelab").__file__).parent / "models/configs/sdxl/unet/config.json"
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(json.loads(config_path.read_text()))


def test_full_size_sdxl_has_sd_scripts_23_blocks_in_ldm_order():
    unet = full_size_sdxl_unet()
    labels = unet_block_labels(unet)
    assert labels == (["time/label embedding"] + [f"input_blocks.{i}" for i in range(9)]
                      + [f"middle_block.{i}" for i in range(3)] + [f"output_blocks.{i}" for i in range(9)] + ["out"])
    blocks = unet_parameter_blocks(unet)
    assert set(blocks) == {n for n, _ in unet.named_parameters()}  # every parameter has a block
    expected = {
        "time_embedding.linear_1.weight": 0,
        "add_embedding.linear_2.weight": 0,  # SDXL's size / pooled-text embedding = label_emb
        "conv_in.weight": 1,  # input_blocks.0
        "down_blocks.0.resnets.1.conv1.weight": 3,  # input_blocks.2
        "down_blocks.0.downsamplers.0.conv.weight": 4,  # input_blocks.3
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight": 5,  # input_blocks.4
        "down_blocks.2.attentions.1.proj_out.weight": 9,  # input_blocks.8
        "mid_block.resnets.0.conv1.weight": 10,  # middle_block.0
        "mid_block.attentions.0.norm.weight": 11,  # middle_block.1
        "mid_block.resnets.1.conv2.weight": 12,  # middle_block.2
        "up_blocks.0.resnets.0.conv1.weight": 13,  # output_blocks.0
        "up_blocks.0.upsamplers.0.conv.weight": 15,  # output_blocks.2 (the level's last block holds the upsampler)
        "up_blocks.2.resnets.2.conv_shortcut.weight": 21,  # output_blocks.8
        "conv_norm_out.weight": 22,
        "conv_out.bias": 22,
    }
    assert {name: blocks[name] for name in expected} == expected
    sizes = [0] * 23
    for name, p in unet.named_parameters():
        sizes[blocks[name]] += p.numel()
    assert all(sizes) and sum(sizes) == sum(p.numel() for p in unet.parameters())
    assert sizes[1] == 4 * 320 * 3 * 3 + 320  # input_blocks.0 is conv_in alone


def test_tiny_sdxl_has_the_same_block_count_and_wrong_count_is_one_line():
    unet = tiny_sdxl().unet
    assert len(unet_block_labels(unet)) == 23
    with pytest.raises(TunelabError, match=r"unet.block_lr: 22 values given, this UNet has 23 blocks"):
        block_learning_rates(unet, [1e-5] * 22)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        RunConfig.model_validate({"model": {"path": "x"}, "unet": {"block_lr": [1e-5] * 22 + [-1.0]}})


def test_zero_blocks_stay_bit_identical_and_each_block_gets_its_learning_rate(train_tiny):
    labels = unet_block_labels(small_sdxl().unet)  # layers_per_block 1: 17 blocks
    assert len(labels) == 17
    block_lr = [0.0 if i in (0, 5, 7, 16) else 1e-3 * (1 + i % 3) for i in range(len(labels))]
    c, before, run = train_tiny(unet={"block_lr": block_lr}, text_encoder={"mode": "off"})

    blocks = unet_parameter_blocks(c.unet)
    frozen = {n for n, b in blocks.items() if block_lr[b] == 0}
    assert any(n.startswith("time_embedding.") for n in frozen) and any(n.startswith("conv_out.") for n in frozen)
    assert changed(before["unet"], c.unet) == set(blocks) - frozen  # everything else moved, the zero blocks did not
    groups = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    assert groups == {f"unet.{labels[i]}": lr for i, lr in enumerate(block_lr) if lr > 0}


def test_block_lr_composes_with_presets_and_shows_in_dry_run():
    c = tiny_sdxl()
    block_lr = [2e-5] * 23
    block_lr[11] = 0.0  # middle_block.1 (the mid transformer) frozen
    config = RunConfig.model_validate({"model": {"path": "x"}, "train": {"max_steps": 1},
                                       "unet": {"preset": "attn-only", "block_lr": block_lr}})
    plan = plan_trainable(c, config)
    trainable = plan.parts["unet"].trainable
    assert trainable and all(".attn" in n for n in trainable)  # the preset still selects
    assert not any(n.startswith("mid_block.") for n in trainable)
    names = [g["name"] for g in parameter_groups(plan)]
    assert "unet.input_blocks.4" in names and "unet.middle_block.1" not in names and "unet.input_blocks.1" not in names
    text = format_dry_run(plan)
    assert "UNet block learning rates: time/label embedding 2e-05, input_blocks.0 2e-05" in text
    assert "middle_block.1 0, " in text
