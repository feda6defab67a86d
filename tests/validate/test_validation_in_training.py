"""Validation inside `tunelab train`: logged at the cadence, and the same numbers after a resume (the validation
draws do not come from the training RNG, and a resumed run rebuilds the retention set from `[model] path`)."""

import torch

from tunelab.models.io import load_model, save_model
from tunelab.train.batches import InMemoryBatches
from tunelab.train.config import RunConfig
from tunelab.train.recipe import run_training


def items(count: int = 8) -> dict:
    g = torch.Generator().manual_seed(0)
    captions = ["red, circle", "blue, car, night", "", "mira, forest"]
    return {"latents": torch.randn(count, 4, 8, 8, generator=g), "captions": [captions[i % 4] for i in range(count)]}


def config(tmp_path, name: str, max_steps: int, cache: str) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"path": str(tmp_path / "base")},
        "train": {"output_dir": str(tmp_path / name), "max_steps": max_steps, "batch_size": 4, "seed": 3},
        "text_encoder": {"mode": "on", "learning_rate": 1e-3}, "unet": {"learning_rate": 1e-3},
        "checkpoint": {"every_n_steps": 2, "every_n_epochs": 0},
        "logging": {"progress_bar": False, "tensorboard": True},
        "validation": {"retention_prompts": ["red, car", "mira, forest"], "samples_per_prompt": 2, "bands": 4,
                       "retention_steps": 3, "every_n_steps": 2, "cache_dir": str(tmp_path / cache)},
    })


def validation_scalars(output_dir) -> dict[tuple[str, int], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output_dir / "tensorboard"))
    events.Reload()
    return {(tag, e.step): e.value for tag in events.Tags()["scalars"] if tag.startswith("val/")
            for e in events.Scalars(tag)}


def test_validation_numbers_do_not_change_when_training_is_resumed(tmp_path, small_model):
    save_model(small_model, tmp_path / "base", format="diffusers")
    straight = config(tmp_path, "straight", 4, "cache")
    run_training(straight, components=load_model(straight.model.path), batches=InMemoryBatches(items(), batch_size=4, seed=3))
    first_half = config(tmp_path, "half", 2, "cache")
    run_training(first_half, components=load_model(first_half.model.path), batches=InMemoryBatches(items(), batch_size=4, seed=3))
    resumed = config(tmp_path, "resumed", 4, "fresh-cache")  # retention set regenerated from [model] path
    run_training(resumed, components=load_model(resumed.model.path), batches=InMemoryBatches(items(), batch_size=4, seed=3),
                 resume=tmp_path / "half" / "checkpoints" / "step-000002")
    expected = validation_scalars(tmp_path / "straight")
    assert sorted({step for _, step in expected}) == [2, 4]
    assert len(expected) == 2 * 5  # mean + 4 bands at steps 2 and 4
    assert validation_scalars(tmp_path / "half") == {k: v for k, v in expected.items() if k[1] == 2}
    after_resume = {k: v for k, v in validation_scalars(tmp_path / "resumed").items() if k[1] == 4}
    assert after_resume == {k: v for k, v in expected.items() if k[1] == 4}
    assert expected[("val/retention/mean", 4)] != expected[("val/retention/mean", 2)]  # training moved the model
