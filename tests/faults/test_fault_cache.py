"""Defect 2: `tunelab cache --verify` passed a partly built cache (a third of the latents, no text store: "latents:
ok", exit 0), training then failed at step 7 with no checkpoint, and `--repair` exited 1 even after repairing.
Here a real `tunelab cache` is killed (SIGKILL) at a seeded file event inside its second shard's writing."""

from __future__ import annotations

import random
import signal

import torch
from fault_setup import assert_one_line_error, copy_data, run_tunelab, tunelab_here, write_run

from tunelab.data.cache import LatentCache
from tunelab.data.index import DatasetIndex

BOTH = '{ dir = "cache2", latents = true, text_embeddings = true, shard_items = 4 }'


def test_partial_cache_is_reported_refused_by_train_then_finished_bit_identical(tmp_path, toy_data,
                                                                                 tiny_model_folder):
    root = copy_data(toy_data, tmp_path)
    config = str(write_run(root, tiny_model_folder, cache=BOTH))
    event = random.Random(2).randint(5, 8)  # a shard is 4 file events: temp created, written, synced, renamed
    code, output = run_tunelab(root, "cache", config, "--quiet",
                               fault=("--kill-at-write", f"{root}/cache2/latents:{event}"))
    assert code == -signal.SIGKILL and f"killed at write event {event}" in output, output

    code, output = tunelab_here(root, "cache", config, "--verify")
    assert code == 1, output
    assert "latents: incomplete (4 of 12 items cached, 8 missing)" in output and "text: not built" in output
    code, output = tunelab_here(root, "train", config)  # refused before step 1
    assert_one_line_error(code, output, "cache incomplete", "latents: incomplete (4 of 12", "text: not built")
    assert not (root / "run").exists()

    code, output = tunelab_here(root, "cache", config, "--quiet")  # continues where it stopped
    assert code == 0 and "latents: 12 items, 8 computed, 4 already cached" in output, output
    code, output = tunelab_here(root, "cache", config, "--verify")
    assert code == 0 and "latents: ok (all 12 items cached)" in output and "text: ok (all 12" in output, output
    with DatasetIndex.open_existing(root / "index.sqlite") as index:  # = the uninterrupted build, bit for bit
        items = list(index.iter_items(split=None))
    resumed, straight = LatentCache(root / "cache2/latents"), LatentCache(toy_data / "cache/latents")
    for item in items:
        assert torch.equal(resumed.latents([item]), straight.latents([item])), item.id

    shard = sorted((root / "cache2/latents").glob("shard-*"))[0]  # damaged: --repair drops it, says what to redo
    shard.write_bytes(shard.read_bytes()[:100])
    code, output = tunelab_here(root, "cache", config, "--repair")
    assert code == 0 and "to recompute: latents 4 items" in output, output
    code, output = tunelab_here(root, "cache", config, "--verify")
    assert code == 1 and "latents: incomplete (8 of 12 items cached, 4 missing)" in output, output
