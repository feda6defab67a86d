"""Sources: folders with sidecars and N_name repeats, sd-scripts in_json (streamed), sd-scripts dataset TOML."""

import json
from pathlib import Path

import pytest
from make_images import write_image

from tunelab.data.config import FolderSource, ImageChecks, KohyaDatasetConfigSource, KohyaMetadataSource, load_data_config
from tunelab.data.index import DatasetIndex
from tunelab.data.prepare import prepare_dataset
from tunelab.data.sources import expand_kohya_dataset_config, iter_candidates, iter_json_object
from tunelab.errors import TunelabError


def _folder(path, **kw):
    return FolderSource(type="folder", path=path, **kw)


def test_folder_sidecars_recursive_and_sorted(tmp_path):
    write_image(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("1girl, solo\n")
    (tmp_path / "b.caption").write_text("A girl alone.")
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.json").write_text(json.dumps({"caption": "from json", "tag_string_artist": "some_artist",
                                                  "tag_string_general": "1girl long_hair"}))  # fmt: skip
    write_image(tmp_path / "sub" / "c.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "d.bin").write_bytes(b"x")
    got = {c.path.name: c for c in iter_candidates([_folder(tmp_path)])}
    assert list(got) == ["a.jpg", "b.png", "c.webp"]
    assert (got["b.png"].text.tags, got["b.png"].text.caption) == ("1girl, solo", "A girl alone.")
    a = got["a.jpg"].text
    assert a.caption == "from json" and a.tag_categories == {"artist": ["some_artist"], "general": ["1girl", "long_hair"]}
    assert a.tags == "some_artist, 1girl, long_hair"
    assert got["c.webp"].text.notes == ("no_caption",)
    assert [c.path.name for c in iter_candidates([_folder(tmp_path, recursive=False)])] == ["a.jpg", "b.png"]


def test_json_sidecar_lists_and_broken_json(tmp_path):
    write_image(tmp_path / "listed.png")
    (tmp_path / "listed.json").write_text(json.dumps({"tags": ["1girl", " solo "], "caption": "  spaced  "}))
    write_image(tmp_path / "broken.png")
    (tmp_path / "broken.json").write_text("[1, 2]")
    got = {c.path.name: c.text for c in iter_candidates([_folder(tmp_path)])}
    assert (got["listed.png"].tags, got["listed.png"].caption) == ("1girl, solo", "spaced")
    assert got["broken.png"].skip_reason == "bad_json_sidecar"


def test_repeat_folders_become_subsets_with_repeats_and_class_token(tmp_path):
    write_image(tmp_path / "10_sks dog" / "x.png")
    write_image(tmp_path / "10_sks dog" / "deeper" / "y.png")
    write_image(tmp_path / "3_style" / "z.png")
    write_image(tmp_path / "plain" / "w.png")
    got = {c.path.name: c.subset for c in iter_candidates([_folder(tmp_path, repeats=2)])}
    assert got["x.png"].repeats == 20 and got["x.png"].caption_options == {"class_tokens": "sks dog"}
    assert got["y.png"] == got["x.png"]  # a subfolder inherits its N_name parent
    assert got["z.png"].repeats == 6
    assert got["w.png"].repeats == 2 and got["w.png"].name == str(tmp_path)
    off = {c.path.name: c.subset.repeats for c in iter_candidates([_folder(tmp_path, repeat_folders=False)])}
    assert set(off.values()) == {1}


TRICKY = {
    "img_001": {"caption": "a \"quoted\" caption, with \\ and ünïcödé ✓", "tags": "1girl, solo", "train_resolution": [1024, 1024]},
    "sub/img_002": {"caption": "", "tags": "", "train_resolution": [832, 1216]},
    "img_003": {"tags": "x" * 3000, "nested": {"a": [1, 2.5e-3, None, True]}, "n": 123456789},
    'odd "key" \\ é': {"caption": "escaped key"},
}


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent, ensure_ascii", [(2, False), (None, True)])
def test_streamed_json_object_equals_json_load_at_any_buffer_size(tmp_path, chunk_chars, indent, ensure_ascii):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(TRICKY, indent=indent, ensure_ascii=ensure_ascii), encoding="utf-8")
    assert dict(iter_json_object(path, chunk_chars=chunk_chars)) == json.loads(path.read_text(encoding="utf-8"))
    path.write_text("{}")
    assert list(iter_json_object(path, chunk_chars=chunk_chars)) == []


@pytest.mark.parametrize("text", ['{"a": {"caption": "x"}, "b": {"capt', '[1, 2]', '{"a": 1 "b": 2}', '{"a": 1,'])
def test_streamed_json_errors_are_one_line_with_position(tmp_path, text):
    path = tmp_path / "meta.json"
    path.write_text(text)
    with pytest.raises(TunelabError, match=r"meta.json: invalid JSON near character \d+"):
        list(iter_json_object(path, chunk_chars=5))


def test_kohya_in_json_keys_by_stem_or_path_and_missing_images(tmp_path):
    images = tmp_path / "images"
    write_image(images / "img_001.png")
    write_image(images / "sub" / "img_002.jpg")
    meta = tmp_path / "meta_lat.json"
    meta.write_text(json.dumps(TRICKY, ensure_ascii=False), encoding="utf-8")
    got = list(iter_candidates([KohyaMetadataSource(type="kohya_metadata", path=meta, image_dir=images, repeats=3)]))
    assert [c.path for c in got][:3] == [images / "img_001.png", images / "sub" / "img_002.jpg", images / "img_003"]
    assert got[0].text.caption == TRICKY["img_001"]["caption"] and got[0].text.tags == "1girl, solo"
    assert got[1].text.notes == ("empty_caption",)
    assert got[2].skip_reason == "image_not_found" and got[0].skip_reason is None
    assert {c.subset.repeats for c in got} == {3}


def test_kohya_dataset_config_toml(tmp_path):
    write_image(tmp_path / "train" / "a.png")
    (tmp_path / "train" / "a.txt").write_text("tag_a, tag_b")
    write_image(tmp_path / "reg" / "r.png")
    (tmp_path / "reg" / "r.cap").write_text("a photo of a dog")
    write_image(tmp_path / "ft" / "f.png")
    (tmp_path / "ft" / "meta_lat.json").write_text(json.dumps({"f": {"caption": "ft caption", "tags": "t1"}}))
    (tmp_path / "dataset.toml").write_text(
        """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = 1024
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "train"
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  caption_extension = "cap"
  class_tokens = "dog"

  [[datasets.subsets]]
  image_dir = "ft"
  metadata_file = "ft/meta_lat.json"
  keep_tokens = 0
"""
    )
    source = KohyaDatasetConfigSource(type="kohya_dataset_config", path=tmp_path / "dataset.toml")
    train, reg, ft = expand_kohya_dataset_config(source)
    assert (train.repeats, train.is_reg, train.caption_options) == (10, False, {"shuffle_caption": True, "keep_tokens": 2})
    assert (reg.is_reg, reg.tags_extension, reg.caption_options["class_tokens"]) == (True, ".cap", "dog")
    assert isinstance(ft, KohyaMetadataSource) and ft.caption_options["keep_tokens"] == 0
    got = {c.path.name: c for c in iter_candidates([source])}
    assert got["a.png"].text.tags == "tag_a, tag_b" and got["a.png"].subset.repeats == 10
    assert got["r.png"].text.tags == "a photo of a dog" and got["r.png"].subset.is_reg  # the one file sd-scripts reads
    assert (got["f.png"].text.caption, got["f.png"].text.tags) == ("ft caption", "t1")
    direct = load_data_config(tmp_path / "dataset.toml")  # `tunelab prepare dataset.toml` works on it as it is
    assert direct.index == tmp_path / "dataset_index.sqlite" and direct.sources == [source]
    direct = direct.model_copy(update={"images": ImageChecks(min_side=8)})
    stats = prepare_dataset(direct, progress=False)
    assert (stats.ok, stats.skipped) == (3, 0)
    with DatasetIndex(direct.index) as index:
        subsets = index.subsets()
        rows = {Path(it.path).name: (subsets[it.subset_id].repeats, subsets[it.subset_id].is_reg) for it in index.iter_items()}
    assert rows == {"a.png": (10, False), "r.png": (1, True), "f.png": (1, False)}
    (tmp_path / "bad.toml").write_text("[[datasets]]\nresolution = 512\n")
    with pytest.raises(TunelabError, match="bad.toml: datasets.0: no"):
        expand_kohya_dataset_config(KohyaDatasetConfigSource(type="kohya_dataset_config", path=tmp_path / "bad.toml"))
