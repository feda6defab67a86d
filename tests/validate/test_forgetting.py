"""Done-when of the validation issue, on the toy world: a finetune that forgets (text encoders trained, high
learning rate) raises the retention loss above the base model's while its training loss falls; a gentle one
(text encoders frozen, lr 1e-5) leaves the retention loss where it was.

The base is a small toy-world model pretrained here for 100 steps (≈20 s; the shipped toy base was not available
when this test was written). Finetunes run through the real trainer (`run_training`) on the toy finetune world;
the "training loss" is the deterministic validation loss on the finetune images themselves. Margins are about
half of what was measured (see the report / README numbers in the assertions' comments)."""

import pytest
import torch

from tunelab.models.io import load_model, save_model
from tunelab.models.tiny import tiny_sdxl
from tunelab.train.batches import InMemoryBatches
from tunelab.train.config import RunConfig
from tunelab.train.recipe import run_training
from tunelab.validate.sets import ValidationItem, ValidationSet
from tunelab.validate.validator import Validator

toy_world = pytest.importorskip("tunelab.toy.world", reason="the toy world (tunelab.toy) is not installed")
base_recipe = pytest.importorskip("tunelab.toy.base_recipe", reason="the toy base recipe is not installed")

RETENTION_PROMPTS = ["red, car, beach", "blue, car, night", "mira, star quest, forest", "mira, star quest, beach",
                     "green, circle, white background", "yellow, triangle, forest", "red, square, night",
                     "blue, circle, beach"]


def pretrained_base(folder):
    """A small toy-world base (UNet 16/32/32, both text encoders trained), saved where `[model] path` points."""
    components = tiny_sdxl(seed=0, block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2, te_widths=(32, 32))
    items = toy_world.generate("base", 512, seed=0)
    latents = base_recipe.encode_latents(components.vae, base_recipe.to_tensor(items))
    components.vae.register_to_config(scaling_factor=float(1 / latents.std()))
    config = base_recipe.ToyBaseConfig(steps=100, batch_size=16, warmup_steps=10, log_every=1000)
    base_recipe.train_base(components, latents, [item.tags for item in items], config, lambda message: None)
    save_model(components, folder, format="diffusers")


def finetune_config(tmp_path, name: str, learning_rate: float, text_encoders: str) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"path": str(tmp_path / "base")},
        "train": {"output_dir": str(tmp_path / name), "max_steps": 30, "batch_size": 8, "seed": 1, "max_chunks": 1},
        "unet": {"learning_rate": learning_rate},
        "text_encoder": {"mode": text_encoders, "learning_rate": learning_rate},
        "checkpoint": {"every_n_epochs": 0, "save_state": False},
        "logging": {"progress_bar": False, "tensorboard": False},
        "validation": {"retention_prompts": RETENTION_PROMPTS, "samples_per_prompt": 4, "retention_steps": 12,
                       "held_out": False, "every_n_steps": 0, "at_checkpoints": False,
                       "cache_dir": str(tmp_path / "cache")},
    })


def test_retention_loss_rises_for_a_forgetting_finetune_and_not_for_a_gentle_one(tmp_path):
    pretrained_base(tmp_path / "base")
    base = load_model(tmp_path / "base")
    finetune = toy_world.generate("finetune", 48, seed=0)
    latents = base_recipe.encode_latents(base.vae, base_recipe.to_tensor(finetune))
    captions = [item.caption for item in finetune]
    validator = Validator(finetune_config(tmp_path, "base-run", 1e-5, "off"), base, base=base, progress=False)
    validator.sets.append(ValidationSet("train", [ValidationItem(f"train:{i}", latents[i], captions[i], (32, 32),
                                                                 (0, 0), (32, 32)) for i in range(len(captions))]))
    before = validator(base)

    def finetuned(name: str, learning_rate: float, text_encoders: str) -> dict:
        model = load_model(tmp_path / "base")
        run_training(finetune_config(tmp_path, name, learning_rate, text_encoders), components=model,
                     batches=InMemoryBatches({"latents": latents, "captions": captions}, batch_size=8, seed=1))
        return validator(model)

    forgetting = finetuned("forgetting", 1e-3, "on")
    gentle = finetuned("gentle", 1e-5, "off")

    def change(after: dict, key: str) -> float:
        return after[f"val/{key}"] - before[f"val/{key}"]

    summary = {name: {k: round(change(r, f"{k}/mean"), 4) for k in ("train", "retention")}
               for name, r in (("forgetting", forgetting), ("gentle", gentle))}
    print(summary)
    # measured (this test, 2 cores shared): forgetting train -0.0723, retention +0.0460; gentle train -0.0022,
    # retention +0.0001 (base retention ≈ 0.79, train ≈ 0.48)
    assert change(forgetting, "train/mean") < -0.03
    assert change(forgetting, "retention/mean") > 0.02
    assert change(gentle, "train/mean") < 0  # it still learns, slowly
    assert abs(change(gentle, "retention/mean")) < 0.005
    # the damage is at low and middle noise (content and detail); the highest-noise band even improves
    assert all(change(forgetting, f"retention/band_{k}") > 0.02 for k in range(5))
