"""One test per caption policy (tunelab.data.captions), each on real strings with a seeded random.Random."""

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from tunelab.data.caption_config import CaptionConfig, text_randomness
from tunelab.data.captions import (
    CaptionPolicy,
    SubsetPolicies,
    expand_wildcards,
    item_rng,
    load_tag_categories,
    normalize_tag,
    pick_line,
)
from tunelab.data.index import Subset
from tunelab.errors import TunelabError


def item(tags=None, caption=None, categories=None, subset_id=0, item_id=1):
    return SimpleNamespace(tags=tags, caption=caption, tag_categories=categories, subset_id=subset_id, id=item_id)


def prompt(config: CaptionConfig, it, seed=0, epoch=0, categories=None) -> str:
    return CaptionPolicy(config, categories)(it, random.Random(seed), epoch=epoch)


def test_normalisation_underscores_and_escaped_parentheses():
    c = CaptionConfig()
    assert normalize_tag("astolfo_\\(fate\\)", c) == "astolfo (fate)"
    assert normalize_tag("long_hair", c) == "long hair"
    assert normalize_tag("^_^", c) == "^_^"  # emoticons keep their underscores
    escape = CaptionConfig(parentheses="escape")
    assert normalize_tag("astolfo_\\(fate\\)", escape) == "astolfo \\(fate\\)"
    assert normalize_tag("astolfo (fate)", escape) == "astolfo \\(fate\\)"
    under = CaptionConfig(underscores="to_underscores", parentheses="keep")
    assert normalize_tag("long hair", under) == "long_hair"
    assert normalize_tag("a_\\(b\\)", CaptionConfig(underscores="keep", parentheses="keep")) == "a_\\(b\\)"
    # de-duplication compares normalised forms
    assert prompt(c, item("long_hair, Long hair,  blue_eyes ,long hair")) == "long hair, blue eyes"
    assert prompt(CaptionConfig(deduplicate=False), item("red_hat, red hat")) == "red hat, red hat"


def test_category_order_from_item_and_from_file(tmp_path):
    c = CaptionConfig(order_by_category=True, combine="tags")
    it = item("1girl, solo, hatsune miku, vocaloid, highres, wlop",
              categories={"character": ["hatsune_miku"], "copyright": ["vocaloid"], "artist": ["wlop"], "meta": ["highres"]})
    assert prompt(c, it) == "wlop, hatsune miku, vocaloid, 1girl, solo, highres"
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("hatsune_miku,4,100\nvocaloid,3,50\nwlop,1,10\nhighres,5,1\n1girl,0,1000\n")
    table = load_tag_categories(csv_file)
    assert table == {"hatsune miku": "character", "vocaloid": "copyright", "wlop": "artist", "highres": "meta", "1girl": "general"}
    plain = item("1girl, solo, hatsune miku, vocaloid, highres, wlop")
    assert prompt(c, plain, categories=table) == "wlop, hatsune miku, vocaloid, 1girl, solo, highres"
    json_file = tmp_path / "tags.json"
    json_file.write_text(json.dumps({"solo": "meta", "wlop": "artist"}))
    policy = CaptionPolicy.from_config(c.model_copy(update={"tag_categories_file": json_file}))
    assert policy(plain, random.Random(0)) == "wlop, 1girl, hatsune miku, vocaloid, highres, solo"
    # the item's own categories win over the file's
    own = item("solo, wlop", categories={"general": ["wlop"]})
    assert policy(own, random.Random(0)) == "wlop, solo"
    with pytest.raises(TunelabError, match="not found"):
        load_tag_categories(tmp_path / "missing.csv")


@pytest.mark.parametrize("position, expected", [
    ("keep", "1girl, masterpiece, solo, best_quality_x, best quality"),
    ("front", "masterpiece, best quality, 1girl, solo, best quality x"),
    ("back", "1girl, solo, best quality x, masterpiece, best quality"),
    ("strip", "1girl, solo, best quality x"),
])  # fmt: skip
def test_quality_tag_policy(position, expected):
    c = CaptionConfig(quality_position=position, combine="tags")
    if position == "keep":
        c = c.model_copy(update={"underscores": "keep"})
    assert prompt(c, item("1girl, masterpiece, solo, best_quality_x, best quality")) == expected


def test_quality_tags_survive_shuffle_and_dropout_at_their_position():
    c = CaptionConfig(quality_position="front", shuffle_caption=True, caption_tag_dropout_rate=0.5,
                      quality_tags=["masterpiece"])  # fmt: skip
    for seed in range(20):
        out = prompt(c, item("a, b, c, d, masterpiece, e"), seed=seed).split(", ")
        assert out[0] == "masterpiece" and "masterpiece" not in out[1:]


def test_shuffle_with_keep_tokens():
    c = CaptionConfig(shuffle_caption=True, keep_tokens=2)
    tags = [f"t{i}" for i in range(10)]
    orders = set()
    for seed in range(30):
        out = prompt(c, item(", ".join(tags)), seed=seed).split(", ")
        assert out[:2] == ["t0", "t1"] and sorted(out[2:]) == sorted(tags[2:])
        orders.add(tuple(out))
    assert len(orders) > 20  # really shuffled
    assert prompt(CaptionConfig(), item(", ".join(tags))).split(", ") == tags  # off: order kept


def test_keep_tokens_separator_fixes_prefix_and_suffix():
    c = CaptionConfig(shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||", caption_tag_dropout_rate=0.4)
    for seed in range(30):
        out = prompt(c, item("artist a, char b ||| x1, x2, x3, x4, x5 ||| sfx1, sfx2"), seed=seed).split(", ")
        assert out[:2] == ["artist a", "char b"] and out[-2:] == ["sfx1", "sfx2"]
        assert set(out[2:-2]) <= {"x1", "x2", "x3", "x4", "x5"}
    # without the separator in the text, keep_tokens applies
    assert prompt(c, item("k1, k2, k3, k4, k5, y"), seed=1).split(", ")[:5] == ["k1", "k2", "k3", "k4", "k5"]


def test_secondary_separator_groups_move_together():
    c = CaptionConfig(shuffle_caption=True, secondary_separator=";;;")
    for seed in range(20):
        out = prompt(c, item("a, b, long_hair;;;blue_eyes, c, d"), seed=seed).split(", ")
        at = out.index("long hair")
        assert out[at + 1] == "blue eyes" and sorted(out) == ["a", "b", "blue eyes", "c", "d", "long hair"]


def test_tag_dropout_rate_is_respected():
    c = CaptionConfig(caption_tag_dropout_rate=0.3, keep_tokens=1)
    tags = ", ".join(f"t{i}" for i in range(21))
    kept = Counter()
    for seed in range(400):
        out = prompt(c, item(tags), seed=seed).split(", ")
        assert out[0] == "t0"
        kept.update(out[1:])
    rate = 1 - sum(kept.values()) / (400 * 20)
    assert 0.27 < rate < 0.33


def test_caption_dropout_gives_empty_prompt():
    c = CaptionConfig(caption_dropout_rate=0.25)
    outs = [prompt(c, item("a, b", "a cat"), seed=s) for s in range(800)]
    assert 0.21 < outs.count("") / 800 < 0.29
    assert set(outs) == {"", "a cat, a, b"}  # default: caption first, as sd-scripts joins in_json
    every = CaptionConfig(caption_dropout_every_n_epochs=3)
    assert [prompt(every, item("a"), epoch=e) for e in range(6)] == ["a", "a", "", "a", "a", ""]


@pytest.mark.parametrize("combine, expected", [
    ("tags_first", "1girl, solo, a girl standing"),
    ("caption_first", "a girl standing, 1girl, solo"),
    ("tags", "1girl, solo"),
    ("caption", "a girl standing"),
])  # fmt: skip
def test_dual_tags_and_caption(combine, expected):
    c = CaptionConfig(combine=combine)
    assert prompt(c, item("1girl, solo", "a girl standing")) == expected
    assert prompt(c, item(None, "only caption")) == "only caption"  # a missing side falls back
    assert prompt(c, item("only, tags", "")) == "only, tags"


def test_dual_random_pick_follows_probability():
    c = CaptionConfig(combine="random", caption_probability=0.7)
    outs = Counter(prompt(c, item("t1, t2", "the caption"), seed=s) for s in range(1000))
    assert set(outs) == {"t1, t2", "the caption"} and 0.65 < outs["the caption"] / 1000 < 0.75


def test_wildcards_and_pick_one_line():
    rng = random.Random(0)
    seen = Counter(expand_wildcards("a {red|blue|green} {cat|dog}", rng) for _ in range(300))
    assert set(seen) == {f"a {c} {a}" for c in ("red", "blue", "green") for a in ("cat", "dog")}
    assert expand_wildcards("{x|{y|z}}", random.Random(3)) in {"x", "y", "z"}
    lines = {pick_line("first line\n\nsecond line\n third line ", random.Random(s)) for s in range(50)}
    assert lines == {"first line", "second line", "third line"}
    c = CaptionConfig(enable_wildcard=True, combine="caption")
    outs = {prompt(c, item(None, "a {big|small} cat\na dog"), seed=s) for s in range(100)}
    assert outs == {"a big cat", "a small cat", "a dog"}
    # without wildcard mode a multi-line caption is one line and braces stay
    assert prompt(CaptionConfig(combine="caption"), item(None, "a {big|small} cat\na dog")) == "a {big|small} cat a dog"


def test_prefix_suffix_and_class_tokens():
    c = CaptionConfig(caption_prefix="style x", caption_suffix="end", class_tokens="sks dog")
    assert prompt(c, item("a, b")) == "style x, a, b, end"
    assert prompt(c.model_copy(update={"caption_prefix": "", "caption_suffix": ""}), item(None, None)) == "sks dog"


def test_same_seed_epoch_item_gives_same_prompt_and_others_differ():
    c = CaptionConfig(shuffle_caption=True, caption_tag_dropout_rate=0.2, enable_wildcard=True)
    it = item(", ".join(f"t{i}" for i in range(15)))
    policy = CaptionPolicy(c)
    first = policy(it, item_rng(7, 2, 42), epoch=2)
    assert all(policy(it, item_rng(7, 2, 42), epoch=2) == first for _ in range(5))
    others = {policy(it, item_rng(7, e, i, o), epoch=e) for e in range(3) for i in (42, 43) for o in range(2)}
    assert len(others) >= 10


def test_subset_options_override_and_report_unknown_keys():
    base = CaptionConfig()
    subsets = {
        1: Subset("a", id=1, caption_options={"shuffle_caption": True, "keep_tokens": 1, "caption_separator": ",",
                                          "flip_aug": True}),  # fmt: skip
        2: Subset("b", id=2, caption_options={"class_tokens": "ohwx person"}),
    }
    policies = SubsetPolicies(base, subsets)
    assert policies.policy(1).config.shuffle_caption and policies.policy(1).config.separator == ","
    assert policies.ignored_options == {1: ["flip_aug"]}
    assert policies.prompt(item(None, None, subset_id=2), seed=0, epoch=0) == "ohwx person"
    assert policies.policy(99).config == base
    with pytest.raises(TunelabError, match="^c: subset caption options: keep_tokens"):
        SubsetPolicies(base, {3: Subset("c", id=3, caption_options={"keep_tokens": -1})})


def test_text_randomness_names_each_cause():
    assert text_randomness(CaptionConfig(quality_position="front", order_by_category=True)) is None
    assert "shuffle_caption" in text_randomness(CaptionConfig(shuffle_caption=True))
    assert "caption_dropout_rate" in text_randomness(CaptionConfig(caption_dropout_rate=0.1))
    assert "enable_wildcard" in text_randomness(CaptionConfig(enable_wildcard=True))
    assert "random" in text_randomness(CaptionConfig(combine="random"))
    assert text_randomness(CaptionConfig(combine="random", caption_probability=1.0)) is None
