"""Validation sets from real files: the index's held-out split, a user folder, the cached retention set."""

import os

import pytest
import torch
from validation_helpers import run_config
from PIL import Image

from tunelab.data.config import DataConfig
from tunelab.data.index import VALIDATION, DatasetIndex
from tunelab.data.pixels import item_pixels
from tunelab.data.prepare import prepare_dataset
from tunelab.errors import TunelabError
from tunelab.validate.retention import cache_path, files_fingerprint, generation_settings
from tunelab.validate.sets import folder_set
from tunelab.validate.validator import Validator

PROMPTS = ["red, car, beach", "blue, circle, night"]


def write_images(folder, count: int) -> None:
    """Flat-colour images with comma-separated tag sidecars (`name.png` + `name.txt`)."""
    folder.mkdir(parents=True)
    colours = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
    for i in range(count):
        name = list(colours)[i % 4]
        Image.new("RGB", (32, 32) if i % 3 else (48, 32), colours[name]).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"{name}, circle, tag{i}, forest\n")


def toy_data(tmp_path, shuffle: bool) -> DataConfig:
    write_images(tmp_path / "images", 16)
    config = DataConfig.model_validate({
        "index": "index.sqlite", "sources": [{"type": "folder", "path": "images"}],
        "split": {"validation_fraction": 0.4},
        "buckets": {"resolution": 32, "step": 8, "min_side": 16, "max_side": 64}, "images": {"min_side": 16},
        "captions": {"shuffle_caption": shuffle, "caption_dropout_rate": 0.5},
    }).resolved(tmp_path)
    prepare_dataset(config, progress=False)
    return config


def test_held_out_set_is_the_index_validation_split_with_fixed_captions(tmp_path, small_model):
    data = toy_data(tmp_path, shuffle=True)
    config = run_config(tmp_path, max_held_out=50).model_copy(update={"data": data})
    validator = Validator(config, small_model, progress=False)
    assert [s.name for s in validator.sets] == ["held_out"]
    with DatasetIndex.open_existing(data.index) as index:
        rows = list(index.iter_items(split=VALIDATION))
    items = validator.sets[0].items
    assert 0 < len(items) == len(rows) < 16
    for row, item in zip(rows, items):
        assert item.caption == row.tags.strip()  # no shuffle, no dropout, in file order
        assert item.key == f"held_out:{row.content_hash}"
        with torch.no_grad():
            expected = small_model.vae.encode(item_pixels(row)[None]).latent_dist.mean[0]
        torch.testing.assert_close(item.latents, expected)
    capped = Validator(run_config(tmp_path, max_held_out=2).model_copy(update={"data": data}), small_model,
                       progress=False)
    assert [it.key for it in capped.sets[0].items] == [it.key for it in items[:2]]


def test_folder_set_centre_crops_to_the_native_size_and_reads_sidecars(tmp_path, small_model):
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(folder / "wide.png")
    (folder / "wide.txt").write_text("red, square")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(folder / "b.png")
    validation_set = folder_set(small_model, folder, 32, progress=False)
    by_key = {it.key: it for it in validation_set.items}
    assert sorted(by_key) == ["folder:b.png", "folder:wide.png"]
    wide = by_key["folder:wide.png"]
    assert wide.latents.shape == (4, 8, 8) and wide.caption == "red, square"
    assert wide.original_size == (32, 48) and wide.crop_top_left == (0, 8) and wide.target_size == (32, 32)
    assert by_key["folder:b.png"].caption == ""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TunelabError, match="no images"):
        folder_set(small_model, empty, 32)


class BaseModelLoaded(Exception):
    """Raised by a `load_base` that must not be called: only this, not any assertion inside the code under test."""


def test_retention_set_is_generated_once_per_base_and_cached(tmp_path, small_model):
    config = run_config(tmp_path, retention_prompts=PROMPTS, samples_per_prompt=2, held_out=False)
    first = Validator(config, small_model, base=small_model, progress=False).sets[0]
    files = list((tmp_path / "cache").glob("retention-*.safetensors"))
    assert len(files) == 1 and len(first.items) == 4
    assert [it.caption for it in first.items] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert not torch.equal(first.items[0].latents, first.items[1].latents)  # one generator per image

    def must_not_load():
        raise BaseModelLoaded

    from tunelab.validate.retention import retention_set

    settings = dict(base_fingerprint=files[0].name, load_base=must_not_load, size=32, progress=False)
    with pytest.raises(BaseModelLoaded):  # another base fingerprint is another cache entry: the base is needed
        retention_set(config.validation, config, **settings)
    from tunelab.data.cache import weights_fingerprint

    settings["base_fingerprint"] = weights_fingerprint(*small_model.named_parts().values())
    again = retention_set(config.validation, config, **settings)
    for a, b in zip(first.items, again.items):
        assert a.key == b.key and torch.equal(a.latents, b.latents)
    # more samples per prompt: a new entry, and the images already there keep their seeds
    more = run_config(tmp_path, retention_prompts=PROMPTS, samples_per_prompt=3, held_out=False)
    bigger = Validator(more, small_model, base=small_model, progress=False).sets[0]
    assert len(list((tmp_path / "cache").glob("retention-*.safetensors"))) == 2
    torch.testing.assert_close(bigger.items[0].latents, first.items[0].latents, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bigger.items[4].latents, first.items[3].latents, rtol=1e-4, atol=1e-5)


def test_cache_key_covers_base_and_settings(tmp_path):
    config = run_config(tmp_path, retention_prompts=PROMPTS)
    settings = generation_settings(config.validation, config, 32)
    key = cache_path(tmp_path, "base-a", settings)
    assert key != cache_path(tmp_path, "base-b", settings)
    other = run_config(tmp_path, retention_prompts=PROMPTS, retention_cfg_scale=2.0)
    assert key != cache_path(tmp_path, "base-a", generation_settings(other.validation, other, 32))
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    weights = model / "unet" / "w.safetensors"
    weights.write_bytes(b"1234")
    memo = tmp_path / "hashes.json"
    before = files_fingerprint(model, memo)
    assert files_fingerprint(model) == before == files_fingerprint(model, memo)  # memo or not: the same digest
    weights.write_bytes(b"1235")
    os.utime(weights, ns=(1, 1))  # a changed file with a changed mtime is hashed again
    assert files_fingerprint(model, memo) != before
    assert files_fingerprint(model, memo) == files_fingerprint(model)
