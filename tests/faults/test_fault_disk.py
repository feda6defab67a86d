"""Defect 4 (disk full): `train` ended in a 56-line `RuntimeError: basic_ios::clear` and left an 83 MB
`.step-N.tmp`; `cache` in a 49-line `sqlite3.OperationalError`. Each on a small filesystem this test mounts
(tmpfs): one line naming the folder, the space, what is intact; then, with room again, the run continues."""

from __future__ import annotations

from fault_setup import assert_one_line_error, copy_data, resize_filesystem, small_filesystem, tunelab_here, write_run


def test_train_on_a_full_disk_stops_with_one_line_and_resumes(tmp_path, toy_data, tiny_model_folder):
    root = copy_data(toy_data, tmp_path)
    # a checkpoint of the tiny model is ~37 MB: the first fits in 50 MB, the second does not
    with small_filesystem(root / "small", "50m"):
        config = str(write_run(root, tiny_model_folder, output_dir="small/run", steps=4, keep_last=5))
        code, output = tunelab_here(root, "train", config)
        checkpoints = root / "small/run/checkpoints"
        assert_one_line_error(code, output, f"{checkpoints}: disk full while writing checkpoint step-000004",
                              "MiB free, about ", "MiB needed", "the previous checkpoint step-000002 is intact")
        assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002"]  # no half-written temp folder
        resize_filesystem(root / "small", "120m")
        code, output = tunelab_here(root, "train", config, "--resume", "latest")
        assert code == 0, output
        assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002", "step-000004"]


def test_cache_on_a_full_disk_stops_with_one_line_and_continues(tmp_path, toy_data, tiny_model_folder):
    root = copy_data(toy_data, tmp_path)
    config = str(write_run(root, tiny_model_folder, cache='{ dir = "small/cache", latents = true, '
                                                          'text_embeddings = true, shard_items = 4 }'))
    for size in ("24k", "96k"):  # full while SQLite creates the catalogue; full after some shards
        with small_filesystem(root / "small", size):
            code, output = tunelab_here(root, "cache", config, "--quiet")
            assert_one_line_error(code, output, f"{root / 'small/cache'}: disk full while writing the cache",
                                  "the shards finished before it are intact")
            assert not list((root / "small").rglob("*.tmp"))
            resize_filesystem(root / "small", "10m")
            code, output = tunelab_here(root, "cache", config, "--quiet")
            assert code == 0 and "latents: 12 items" in output, output
            code, output = tunelab_here(root, "cache", config, "--verify")
            assert code == 0, output
