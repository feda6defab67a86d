"""The toy world generator: determinism, which concepts each world holds, tags and categories, files on disk."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.models.tokenizers import clip_tokenizer
from tunelab.toy.concepts import CATEGORY_ORDER, QUALITY_TAGS, STYLE_TAG, UNKNOWN_TAG, tag_categories
from tunelab.toy.world import WORLDS, generate, make_item, write_dataset


def pixels(item):
    return np.asarray(item.image)


def test_same_seed_same_items_and_item_independent_of_count():
    a, b = generate("base", 20, seed=3), generate("base", 20, seed=3)
    assert all((pixels(x) == pixels(y)).all() and x.tags == y.tags for x, y in zip(a, b))
    assert (pixels(make_item("base", 3, 17)) == pixels(a[17])).all()
    other = generate("base", 20, seed=4)
    assert sum((pixels(x) != pixels(y)).any() for x, y in zip(a, other)) >= 15
    assert a[0].image.size == (32, 32) and a[0].image.mode == "RGB"


def test_base_world_never_shows_the_unknown_concept_or_the_finetune_style():
    items = generate("base", 1000, seed=0)
    tags = [t for item in items for t in item.tags]
    assert UNKNOWN_TAG not in tags and STYLE_TAG not in tags and "purple" not in tags and "star" not in tags
    scenes = [item.scene for item in items]
    assert not any(s.outline or s.colour == "purple" or s.shape == "star" for s in scenes)
    kiko = [s for s in scenes if s.character == "kiko"]
    mira = [s for s in scenes if s.character == "mira"]
    assert 0.03 < len(kiko) / len(items) < 0.1 and len(mira) > 3 * len(kiko)  # half-known: rare...
    assert 0.5 < sum(s.eyes_closed for s in kiko) / len(kiko) < 0.8  # ...and usually without her eye colour
    assert not any(s.eyes_closed for s in mira)


def test_finetune_world_centres_on_half_known_and_unknown_in_the_new_style():
    items = generate("finetune", 200, seed=0)
    assert all(item.scene.outline and STYLE_TAG in item.tags for item in items)
    zorb = [item for item in items if UNKNOWN_TAG in item.tags]
    kiko = [item for item in items if "kiko" in item.tags]
    assert len(zorb) > 50 and len(kiko) > 50
    assert all(item.scene.colour == "purple" and item.scene.shape == "star" for item in zorb)
    assert all(not item.scene.eyes_closed for item in kiko)
    assert sum("masterpiece" in item.tags for item in items) > 100


def test_every_tag_has_a_category_and_files_are_in_booru_order():
    categories = tag_categories()
    assert set(categories.values()) == set(CATEGORY_ORDER)
    assert all(categories[t] == "meta" for t in QUALITY_TAGS)
    for world in WORLDS:
        for item in generate(world, 60, seed=1):
            ranks = [CATEGORY_ORDER.index(categories[t]) for t in item.tags]
            assert ranks == sorted(ranks), item.tags


def test_unknown_tag_shares_no_token_with_base_captions():
    """So the base model's text encoders never trained any part of it."""
    tokenizer = clip_tokenizer()
    base_tokens = {tok for item in generate("base", 400, seed=0) for tok in tokenizer(item.caption, add_special_tokens=False).input_ids}
    unknown = tokenizer(UNKNOWN_TAG, add_special_tokens=False).input_ids
    assert unknown and not set(unknown) & base_tokens


def test_write_dataset_files_and_cli(tmp_path):
    folder = write_dataset(tmp_path / "ft", "finetune", count=6, seed=2, progress=False)
    truth = json.loads((folder / "toy_world.json").read_text())
    assert truth["count"] == 6 and len(list(folder.glob("*.png"))) == 6
    for name, entry in truth["items"].items():
        assert (folder / f"{name}.txt").read_text().strip() == ", ".join(entry["tags"])
    first = make_item("finetune", 2, 0)
    from PIL import Image

    assert (np.asarray(Image.open(folder / f"{first.name}.png")) == pixels(first)).all()

    result = CliRunner().invoke(app, ["toy", "dataset", "--out", str(tmp_path / "b"), "--world", "base", "--count", "3"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "b").glob("*.txt"))) == 3
    with pytest.raises(TunelabError, match="world 'moon'"):
        write_dataset(tmp_path / "x", "moon", count=3)
