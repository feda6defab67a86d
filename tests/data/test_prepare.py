"""The prepare stage: incremental re-runs, deterministic split, validation folder, buckets in rows, config errors."""

import os
import shutil

import pytest
from make_images import write_image
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.buckets import assign_bucket
from tunelab.data.config import DataConfig, load_data_config
from tunelab.data.index import VALIDATION, DatasetIndex
from tunelab.data.prepare import prepare_dataset, report_paths
from tunelab.errors import TunelabError
from tunelab.toy.world import write_dataset

TINY_BUCKETS = {"resolution": 32, "step": 8, "min_side": 16, "max_side": 64}


def _config(tmp_path, folder, **extra) -> DataConfig:
    raw = {"index": "index.sqlite", "sources": [{"type": "folder", "path": str(folder)}], "buckets": TINY_BUCKETS,
           "images": {"min_side": 8}, **extra}  # fmt: skip
    return DataConfig.model_validate(raw).resolved(tmp_path)


def _images(folder, n, start=0):
    for i in range(start, start + n):
        write_image(folder / f"{i:03d}.png", 24 + 8 * (i % 5), 32, seed=i)
        (folder / f"{i:03d}.txt").write_text(f"tag{i}, common")


def _rows(config):
    with DatasetIndex(config.index) as index:
        return {os.path.basename(it.path): it for it in index.iter_items(split=None, status=None)}


def test_second_run_reads_no_unchanged_image_and_tracks_changes(tmp_path):
    data = tmp_path / "data"
    _images(data, 6)
    config = _config(tmp_path, data)
    first = prepare_dataset(config, progress=False)
    assert (first.images_read, first.unchanged, first.ok) == (6, 0, 6)
    before = _rows(config)

    again = prepare_dataset(config, progress=False)
    assert (again.images_read, again.unchanged, again.ok, again.removed) == (0, 6, 6, 0)
    assert _rows(config) == before  # same ids, same facts

    (data / "001.txt").write_text("edited tags")  # a sidecar edit needs no image read
    write_image(data / "002.png", 64, 16, seed=99)  # new content, new size
    os.utime(data / "002.png", ns=(1, 1))
    (data / "003.png").unlink()
    _images(data, 1, start=10)
    third = prepare_dataset(config, progress=False)
    assert (third.images_read, third.unchanged, third.removed, third.ok) == (2, 4, 1, 6)
    rows = _rows(config)
    assert rows["001.png"].tags == "edited tags" and rows["001.png"].id == before["001.png"].id
    assert rows["002.png"].content_hash != before["002.png"].content_hash and rows["002.png"].bucket == (64, 16)
    assert rows["002.png"].id == before["002.png"].id and "003.png" not in rows
    assert rows["010.png"].id > max(r.id for r in before.values())

    stricter = _config(tmp_path, data, images={"min_side": 30})  # changed checks → everything is checked again
    fourth = prepare_dataset(stricter, progress=False)
    assert fourth.images_read == 6 and fourth.skip_counts == {"too_small": 4}  # 24-wide ×3 and the 64×16


def test_rows_carry_size_bucket_resize_and_crop(tmp_path):
    data = tmp_path / "data"
    write_image(data / "wide.png", 80, 40)
    config = _config(tmp_path, data)
    prepare_dataset(config, progress=False)
    row = _rows(config)["wide.png"]
    p = assign_bucket(80, 40, config.buckets)
    assert (row.width, row.height) == (80, 40)
    assert (row.bucket_width, row.bucket_height, row.resize_width, row.resize_height, row.crop_left, row.crop_top) == (
        p.bucket_width, p.bucket_height, p.resize_width, p.resize_height, p.crop_left, p.crop_top)  # fmt: skip
    assert (row.bucket, row.resize_width, row.resize_height) == ((40, 24), 48, 24)  # 2:1 → nearest 5:3, scaled ×0.6
    assert row.original_size_hw == (40, 80) and row.target_size_hw == (24, 40) and row.crop_top_left == (0, 4)


def _validation_hashes(config):
    with DatasetIndex(config.index) as index:
        return {it.content_hash for it in index.iter_items(split=VALIDATION)}


def test_split_by_content_hash_is_deterministic_and_order_free(tmp_path):
    first = tmp_path / "first"
    _images(first, 40)
    config_a = _config(tmp_path / "a", first, split={"validation_fraction": 0.25})
    stats = prepare_dataset(config_a, progress=False)
    held_out = _validation_hashes(config_a)
    assert 3 <= len(held_out) <= 18 and stats.validation == len(held_out) and stats.train == 40 - len(held_out)

    # the same images under other names, in another order, in another index → the same items held out
    second = tmp_path / "second"
    second.mkdir()
    for i, f in enumerate(sorted(first.glob("*.png"), reverse=True)):
        shutil.copy(f, second / f"renamed_{i:03d}.png")
    config_b = _config(tmp_path / "b", second, split={"validation_fraction": 0.25})
    prepare_dataset(config_b, progress=False)
    assert _validation_hashes(config_b) == held_out

    # a copy of an image lands in the same split as the original, and is reported as a duplicate
    shutil.copy(first / "000.png", first / "000_copy.png")
    stats = prepare_dataset(config_a, progress=False)
    assert _validation_hashes(config_a) == held_out
    assert stats.duplicate_groups == [[str(first / "000.png"), str(first / "000_copy.png")]]
    assert "1 duplicate copies" in stats.summary()

    salted = _config(tmp_path / "c", first, split={"validation_fraction": 0.25, "salt": "other"})
    prepare_dataset(salted, progress=False)
    assert _validation_hashes(salted) != held_out


def test_explicit_validation_folder_is_indexed_and_held_out(tmp_path):
    _images(tmp_path / "train", 4)
    _images(tmp_path / "held_out", 3, start=20)
    config = _config(tmp_path, tmp_path / "train", split={"validation_folder": "held_out"})
    stats = prepare_dataset(config, progress=False)
    assert (stats.train, stats.validation) == (4, 3)
    assert {os.path.basename(it.path) for it in DatasetIndex(config.index).iter_items(split=VALIDATION)} == {
        "020.png", "021.png", "022.png"}  # fmt: skip


def test_repeat_subsets_stored_and_report_written(tmp_path):
    _images(tmp_path / "data" / "5_cat", 2)
    (tmp_path / "data" / "broken.png").write_bytes(b"not a png at all")
    config = _config(tmp_path, tmp_path / "data")
    prepare_dataset(config, progress=False)
    with DatasetIndex(config.index) as index:
        cat = [s for s in index.subsets().values() if s.name.endswith("5_cat")][0]
        assert cat.repeats == 5 and cat.caption_options == {"class_tokens": "cat"}
        assert {it.subset_id for it in index.iter_items()} == {cat.id}
    report_json, report_text = report_paths(config.index)
    assert report_text.read_text().splitlines()[-1] == f"not_an_image\t{tmp_path / 'data' / 'broken.png'}\tno image format recognised"
    assert '"not_an_image": 1' in report_json.read_text()


def test_cli_prepare_and_config_errors(tmp_path):
    _images(tmp_path / "imgs", 3)
    (tmp_path / "run.toml").write_text(
        '[model]\npath = "unused"\n[data]\nsources = [{type = "folder", path = "imgs"}]\n'
        'buckets = {resolution = 32, step = 8, min_side = 16, max_side = 64}\nimages = {min_side = 8}\n'
    )
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "run.toml"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("3 items indexed (3 train, 0 validation), 0 skipped (none); 0 duplicate copies")
    assert (tmp_path / "dataset_index.sqlite").exists()

    (tmp_path / "typo.toml").write_text('[data]\nsources = [{type = "folder", path = "imgs", repeat = 2}]\n')
    with pytest.raises(TunelabError, match=r"typo.toml: data.sources.0.folder.repeat: unknown key"):
        load_data_config(tmp_path / "typo.toml")
    (tmp_path / "nodata.toml").write_text('[model]\npath = "x"\n')
    with pytest.raises(TunelabError, match="no \\[data\\] table"):
        load_data_config(tmp_path / "nodata.toml")


def test_toy_finetune_world_prepares_end_to_end(tmp_path):
    folder = write_dataset(tmp_path / "finetune", "finetune", count=12, progress=False)
    config = _config(tmp_path, folder, images={}, split={"validation_fraction": 0.25})
    stats = prepare_dataset(config, progress=False)
    assert (stats.ok, stats.skipped, stats.train + stats.validation) == (12, 0, 12)
    for name, row in _rows(config).items():
        assert (row.width, row.height, row.bucket, row.crop_top_left) == (32, 32, (32, 32), (0, 0))
        assert row.tags == (folder / name).with_suffix(".txt").read_text().strip() and row.tags


def test_an_interrupted_run_resumes_without_rereading_committed_images(tmp_path, monkeypatch):
    import tunelab.data.prepare as prepare_module

    data = tmp_path / "data"
    _images(data, 9)
    config = _config(tmp_path, data, batch_rows=2)
    real_inspect, calls = prepare_module.inspect_image, []

    def interrupted_on_the_fifth_image(path, checks):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_inspect(path, checks)

    monkeypatch.setattr(prepare_module, "inspect_image", interrupted_on_the_fifth_image)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(config, progress=False)
    monkeypatch.setattr(prepare_module, "inspect_image", real_inspect)
    resumed = prepare_dataset(config, progress=False)
    assert (resumed.images_read, resumed.unchanged, resumed.ok) == (5, 4, 9)  # two committed batches of two
