"""sd-scripts dataset configs: every key honoured with sd-scripts' meaning or refused in one line; per-dataset
buckets; metadata keys resolved as sd-scripts does; an index with nothing to train on is an error."""

import json
import math
import sys
from pathlib import Path

import pytest
from make_images import write_image

from tunelab import cli
from tunelab.data.buckets import make_buckets
from tunelab.data.config import KohyaDatasetConfigSource, KohyaMetadataSource, load_data_config
from tunelab.data.index import DatasetIndex
from tunelab.data.kohya_dataset_config import KEYS
from tunelab.data.prepare import prepare_dataset
from tunelab.data.sources import expand_kohya_dataset_config, iter_candidates
from tunelab.errors import TunelabError

# (name, width, height): a square, a 2:1 and a 1:2 image, each far from any bucket boundary
ALICE = [("a1", 64, 64), ("a2", 96, 48), ("a3", 40, 80)]
REG = [("r1", 70, 50), ("r2", 50, 70)]
FT = [("f1", 60, 40), ("f2", 45, 30)]

DATASET_TOML = """
[general]
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
resolution = 64
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 16

[[datasets]]
  [[datasets.subsets]]
  image_dir = "img/10_alice"
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = "img/1_reg"
  is_reg = true
  class_tokens = "woman"

[[datasets]]
resolution = [48, 32]
enable_bucket = false
  [[datasets.subsets]]
  metadata_file = "ft/meta.json"
  image_dir = "ft"
  keep_tokens = 0
"""


def sd_scripts_buckets(side: int, low: int, high: int, step: int) -> set[tuple[int, int]]:
    """The bucket set sd-scripts builds for a square resolution, worked from its documented rule: the square of
    the area rounded down to the step, and for every width from min to max the largest height on the step grid
    within the area (kept when not below min)."""
    area = side * side
    square = int(math.sqrt(area)) // step * step
    found = {(square, square)}
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            found |= {(width, height), (height, width)}
    return found


def _write_dataset(root: Path) -> Path:
    for folder, images in (("img/10_alice", ALICE), ("img/1_reg", REG), ("ft", FT)):
        for seed, (name, width, height) in enumerate(images):
            write_image(root / folder / f"{name}.png", width, height, seed=seed)
    for name, *_ in ALICE:
        (root / "img/10_alice" / f"{name}.txt").write_text(f"alice, {name}_tag, smile")
    (root / "img/10_alice" / "a1.caption").write_text("never read: caption_extension is .txt")
    meta = {"f1": {"caption": "a field", "tags": "grass, sky"}, "f2": {"tags": "tree"}}  # stem keys
    (root / "ft" / "meta.json").write_text(json.dumps(meta))
    (root / "dataset.toml").write_text(DATASET_TOML)
    return root / "dataset.toml"


def test_dataset_config_with_resolution_64_indexes_every_image_with_its_buckets(tmp_path):
    path = _write_dataset(tmp_path)
    alice, reg, ft = expand_kohya_dataset_config(KohyaDatasetConfigSource(type="kohya_dataset_config", path=path))
    assert set(make_buckets(alice.buckets)) == sd_scripts_buckets(64, 32, 128, 16) and alice.buckets == reg.buckets
    assert isinstance(ft, KohyaMetadataSource) and not ft.buckets.enabled and ft.buckets.size == (48, 32)
    assert (alice.repeats, alice.is_reg, reg.repeats, reg.is_reg) == (10, False, 1, True)  # names give no repeats
    assert alice.caption_options == {"shuffle_caption": True, "keep_tokens": 1}
    assert reg.caption_options["class_tokens"] == "woman" and ft.caption_options["keep_tokens"] == 0

    config = load_data_config(path)  # `tunelab prepare dataset.toml`: the config's buckets, default image checks
    stats = prepare_dataset(config, progress=False)
    assert (stats.ok, stats.skipped, stats.train) == (7, 0, 7)  # with the run's 1024 buckets all were too small
    buckets = sd_scripts_buckets(64, 32, 128, 16)
    with DatasetIndex(config.index) as index:
        subsets = index.subsets()
        rows = {Path(it.path).stem: it for it in index.iter_items()}
    for name, width, height in ALICE + REG:
        row = rows[name]
        assert row.bucket in buckets and (row.width, row.height) == (width, height)
        aspect_error = abs(math.log(row.bucket_width / row.bucket_height) - math.log(width / height))
        assert all(aspect_error <= abs(math.log(w / h) - math.log(width / height)) + 1e-9 for w, h in buckets)
    assert rows["a1"].bucket == (64, 64) and rows["a2"].bucket == (80, 48) and rows["a3"].bucket == (48, 80)
    assert {rows[n].bucket for n, *_ in FT} == {(48, 32)}  # enable_bucket = false: the one resolution bucket
    assert rows["a1"].tags == "alice, a1_tag, smile" and rows["a1"].caption is None
    assert (rows["f1"].caption, rows["f1"].tags, rows["f2"].tags) == ("a field", "grass, sky", "tree")
    assert {subsets[rows[n].subset_id].repeats for n, *_ in ALICE} == {10}
    assert {subsets[rows[n].subset_id].is_reg for n, *_ in REG} == {True}


def test_changing_the_config_resolution_judges_too_small_images_again(tmp_path):
    path = _write_dataset(tmp_path)
    path.write_text(DATASET_TOML.replace("resolution = [48, 32]", "resolution = 1024"))
    first = prepare_dataset(load_data_config(path), progress=False)
    assert first.skip_counts == {"too_small": 2}  # 1024² single bucket: the 60×40 and 45×30 images are too small
    path.write_text(DATASET_TOML)
    again = prepare_dataset(load_data_config(path), progress=False)
    assert (again.ok, again.skipped) == (7, 0)


@pytest.mark.parametrize("edit, message", [
    (("keep_tokens = 1", "keep_tokens = 1\nflip_augg = true"), r"general\.flip_augg: unknown key"),
    (('num_repeats = 10', 'num_repeats = 10\nflip_aug = true'),
     r"datasets\.0\.subsets\.0\.flip_aug: = True is not supported: tunelab has no image augmentation"),
    (("keep_tokens = 1", "keep_tokens = 1\nis_reg = true"), r"general\.is_reg: belongs in a \[\[datasets\.subsets\]\]"),
    (('num_repeats = 10', 'num_repeats = 10\nbatch_size = 2'), r"datasets\.0\.subsets\.0\.batch_size: belongs in \[\[datasets\]\]"),
    (("keep_tokens = 1", 'keep_tokens = "one"'), r"general\.keep_tokens: expected an integer, got 'one'"),
    (("min_bucket_reso = 32", "min_bucket_reso = 96"), r"datasets\.0\.subsets\.0: min_bucket_reso 96 is above the resolution"),
    (("resolution = 64\n", ""), r"datasets\.0\.subsets\.0: resolution is not set"),
    (('caption_extension = ".txt"', 'caption_extension = ".txt"\ncaption_separator = ";"'),
     r"general\.caption_separator: = ';' is not supported"),
    (("[general]", "[generl]"), r"generl: unknown table"),
])  # fmt: skip
def test_a_key_tunelab_cannot_honour_fails_in_one_line_naming_it(tmp_path, edit, message):
    path = _write_dataset(tmp_path)
    path.write_text(DATASET_TOML.replace(*edit, 1))
    with pytest.raises(TunelabError, match=r"dataset\.toml: " + message) as error:
        list(iter_candidates(load_data_config(path).sources))
    assert "\n" not in str(error.value)


def test_every_key_of_the_table_is_accepted_at_its_default_value(tmp_path):
    """sd-scripts' defaults mean 'nothing asked': even the refused keys pass when written at them."""
    path = _write_dataset(tmp_path)
    defaults = {n: k.default for n, k in KEYS.items()
                if k.default is not None and not k.subset_only and n != "caption_extension"}
    lines = "\n".join(f"{n} = {json.dumps(v)}" for n, v in defaults.items() if n not in DATASET_TOML)
    path.write_text(DATASET_TOML.replace("[general]", "[general]\n" + lines))
    assert len(expand_kohya_dataset_config(KohyaDatasetConfigSource(type="kohya_dataset_config", path=path))) == 3


def test_batch_size_must_agree_with_the_run(tmp_path):
    path = _write_dataset(tmp_path)
    path.write_text(DATASET_TOML.replace("[[datasets]]\n", "[[datasets]]\nbatch_size = 4\n", 1))
    run = tmp_path / "run.toml"
    run.write_text('[model]\npath = "m"\n[train]\nbatch_size = 2\nmax_steps = 1\n'
                   '[data]\nsources = [{type = "kohya_dataset_config", path = "dataset.toml"}]\n')
    with pytest.raises(TunelabError, match=r"datasets\.0\.batch_size: 4 differs from train\.batch_size 2"):
        list(iter_candidates(load_data_config(run).sources))
    run.write_text(run.read_text().replace("batch_size = 2", "batch_size = 4"))
    assert len(list(iter_candidates(load_data_config(run).sources))) == 7


def test_bucket_no_upscale_keeps_each_image_at_or_below_its_own_size(tmp_path):
    for seed, (width, height) in enumerate([(100, 60), (40, 24), (37, 90)]):
        write_image(tmp_path / "img" / f"i{seed}.png", width, height, seed=seed)
    (tmp_path / "dataset.toml").write_text('[[datasets]]\nresolution = 64\nenable_bucket = true\nbucket_no_upscale = true\n'
                                           'bucket_reso_steps = 16\n  [[datasets.subsets]]\n  image_dir = "img"\n')
    config = load_data_config(tmp_path / "dataset.toml")
    prepare_dataset(config, progress=False)
    with DatasetIndex(config.index) as index:
        rows = list(index.iter_items())
    assert len(rows) == 3
    for row in rows:
        assert row.resize_width <= row.width and row.resize_height <= row.height  # never upscaled
        assert row.bucket_width % 16 == 0 and row.bucket_height % 16 == 0
        assert row.bucket_width <= row.resize_width and row.bucket_height <= row.resize_height
        assert row.resize_width * row.resize_height <= 64 * 64 * 1.1 or (row.width, row.height) == (row.resize_width, row.resize_height)
        assert row.resize_width - row.bucket_width < 16 and row.resize_height - row.bucket_height < 16
    small = next(r for r in rows if r.width == 40)
    assert (small.resize_width, small.resize_height, small.bucket) == (40, 24, (32, 16))  # below the area: as is


def test_metadata_keys_resolve_as_sd_scripts_does(tmp_path):
    images = tmp_path / "images"
    write_image(images / "with_ext.jpg")
    write_image(images / "stem.webp")
    write_image(images / "UPPER.PNG")
    elsewhere = write_image(tmp_path / "elsewhere" / "abs.png")
    entries = {"with_ext.jpg": {"tags": "a"}, "stem": {"tags": "b"}, "UPPER": {"tags": "c"}, str(elsewhere): {"tags": "d"},
               "missing": {"tags": "e"}}  # fmt: skip
    (tmp_path / "meta.json").write_text(json.dumps(entries))
    (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps({"image_path": k, **v}) for k, v in entries.items()))
    for name in ("meta.json", "meta.jsonl"):
        source = KohyaMetadataSource(type="kohya_metadata", path=tmp_path / name, image_dir=images)
        got = {c.text.tags: c for c in iter_candidates([source])}
        assert [got[t].path for t in "abcd"] == [images / "with_ext.jpg", images / "stem.webp", images / "UPPER.PNG", elsewhere]
        assert got["e"].skip_reason == "image_not_found"


def test_prepare_with_nothing_to_train_on_exits_2_with_the_reason(tmp_path, monkeypatch, capsys):
    for seed in range(3):
        write_image(tmp_path / "img" / f"{seed}.png", 48, 32, seed=seed)
    (tmp_path / "run.toml").write_text('[data]\nsources = [{type = "folder", path = "img"}]\n')  # 1024 buckets
    monkeypatch.setattr(sys, "argv", ["tunelab", "prepare", str(tmp_path / "run.toml"), "--quiet"])
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "0 train items" in error and "too_small 3" in error
    assert "most common: too_small (3 of 3, e.g. 0.png: 48x32 < 128)" in error
    assert error.endswith("dataset_index.sqlite.skips.txt")
