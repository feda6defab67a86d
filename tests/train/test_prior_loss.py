"""Regularisation images in full finetunes: sources with `is_reg` reach the batch as "is_reg", and their loss is
weighted by train.prior_loss_weight (sd-scripts' --prior_loss_weight)."""

import sys
from pathlib import Path

import pytest
import torch
from tiny_run import small_sdxl, tiny_items

from tunelab.train.config import RunConfig
from tunelab.train.noise import training_scheduler
from tunelab.train.objective import training_loss

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from make_images import write_image  # noqa: E402


def loss_of(components, batch, prior_loss_weight, first_index=0):
    config = RunConfig.model_validate({"model": {"path": "x"}, "train": {"max_steps": 1, "prior_loss_weight": prior_loss_weight}})
    with torch.no_grad():
        loss, _ = training_loss(components, components.unet, batch, config, training_scheduler(components.scheduler, config.loss),
                                seed=0, micro_step=0, first_index=first_index, train_text_encoders=False)
    return float(loss)


def test_prior_loss_weight_scales_exactly_the_regularisation_samples():
    components = small_sdxl()
    items = tiny_items(4)
    batch = {"latents": items["latents"], "captions": items["captions"]}
    # sample i alone, with the noise it gets at position i of the batch
    per_sample = [loss_of(components, {k: v[i:i + 1] for k, v in batch.items()}, 1.0, first_index=i) for i in range(4)]
    plain = loss_of(components, batch, 1.0)
    assert plain == pytest.approx(sum(per_sample) / 4, rel=1e-5)
    weighted = loss_of(components, {**batch, "is_reg": torch.tensor([True, False, True, False])}, 0.25)
    all_reg = loss_of(components, {**batch, "is_reg": torch.ones(4, dtype=torch.bool)}, 0.25)
    no_reg = loss_of(components, {**batch, "is_reg": torch.zeros(4, dtype=torch.bool)}, 0.25)
    assert all_reg == pytest.approx(0.25 * plain, rel=1e-6)
    assert no_reg == pytest.approx(plain, rel=1e-6)
    assert weighted == pytest.approx(plain - 0.75 * (per_sample[0] + per_sample[2]) / 4, rel=1e-5)


def test_loader_marks_items_of_is_reg_sources(tmp_path):
    from tunelab.data.config import DataConfig
    from tunelab.data.index import DatasetIndex
    from tunelab.data.loader import DatasetBatches
    from tunelab.data.prepare import prepare_dataset

    for folder, count in (("train", 6), ("reg", 6)):
        for i in range(count):
            write_image(tmp_path / folder / f"{folder}{i}.png", 32, 32, seed=i + (100 if folder == "reg" else 0))
            (tmp_path / folder / f"{folder}{i}.txt").write_text(f"{folder}, tag{i}")
    config = DataConfig.model_validate({
        "index": "index.sqlite",
        "sources": [{"type": "folder", "path": "train"}, {"type": "folder", "path": "reg", "is_reg": True}],
        "buckets": {"resolution": 32, "step": 8, "min_side": 16, "max_side": 64},
        "images": {"min_side": 16},
    }).resolved(tmp_path)  # fmt: skip
    prepare_dataset(config, progress=False)
    with DatasetIndex(config.index) as index:
        paths = {it.id: it.path for it in index.iter_items()}
        batches = list(DatasetBatches(index, config, batch_size=4, seed=0).epoch_batches(0))
    seen = [(paths[i], bool(r)) for b in batches for i, r in zip(b["item_ids"], b["is_reg"])]
    assert len(seen) == 12
    assert all(is_reg == (Path(path).parent.name == "reg") for path, is_reg in seen)
    assert any(r for _, r in seen) and not all(r for _, r in seen)
