"""The loader on a real prepared index: one bucket per batch, (seed, epoch) determinism, rank split, resume at any
batch without touching skipped images, repeats, the pixel geometry of the batch contract, latents from the cache."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_dataset import make_dataset

from tunelab.data.cache import LatentCache, build_latent_cache
from tunelab.data.index import DatasetIndex
from tunelab.data.loader import DatasetBatches, batches_per_epoch, open_batches, train_batches
from tunelab.errors import TunelabError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("loader"), 30, captions={"shuffle_caption": True, "keep_tokens": 1})


def epoch_ids(config, *, epoch=0, seed=0, batch_size=2, rank=0, world_size=1, start_batch=0):
    with DatasetIndex(config.index) as index:
        return [b["item_ids"] for b in train_batches(index, config, epoch=epoch, seed=seed, batch_size=batch_size,
                                                     rank=rank, world_size=world_size, start_batch=start_batch)]  # fmt: skip


def test_batches_share_a_bucket_and_follow_the_batch_contract(dataset):
    with DatasetIndex(dataset.index) as index:
        source = DatasetBatches(index, dataset, batch_size=3, seed=1)
        batches = list(source.epoch_batches(0))
        assert len(batches) == source.batches_per_epoch() == batches_per_epoch(index, batch_size=3) == 9
        items = {it.id: it for it in index.iter_items()}
    for batch in batches:
        pixels = batch["pixel_values"]
        (h, w), *rest = batch["target_size"].tolist()
        assert all(tuple(t) == (h, w) for t in rest)  # one bucket per batch
        assert pixels.shape == (3, 3, h, w) and pixels.dtype == torch.float32
        assert -1.0 <= pixels.min() and pixels.max() <= 1.0
        for key in ("original_size", "crop_top_left", "target_size"):
            assert batch[key].dtype == torch.long and batch[key].shape == (3, 2)
        for i, item_id in enumerate(batch["item_ids"]):
            item = items[item_id]
            assert batch["original_size"][i].tolist() == [item.height, item.width]
            assert batch["crop_top_left"][i].tolist() == [item.crop_top, item.crop_left]
            assert batch["captions"][i].split(", ")[0] == item.tags.split(", ")[0]  # keep_tokens = 1
            assert sorted(batch["captions"][i].split(", ")) == sorted(item.tags.split(", "))
    used = [i for b in batches for i in b["item_ids"]]
    assert len(used) == len(set(used)) == 27 and set(used) <= set(items)  # 10 per bucket: 9 used, 1 sits out
    assert source.summary() == ("30 items in 3 buckets, 30 appearances per epoch with repeats; 9 global batches "
                                "of 3; 3 appearances sit out each epoch (bucket remainders)")  # fmt: skip


def test_pixels_are_the_recorded_resize_and_crop(dataset):
    with DatasetIndex(dataset.index) as index:
        wide = next(it for it in index.iter_items() if it.width == 48)
        batch = DatasetBatches(index, dataset, batch_size=1).make_batch([wide.id], [0], 0)
    image = Image.open(wide.path).convert("RGB").resize((wide.resize_width, wide.resize_height), Image.BICUBIC)
    box = (wide.crop_left, wide.crop_top, wide.crop_left + wide.bucket_width, wide.crop_top + wide.bucket_height)
    expected = torch.from_numpy(np.asarray(image.crop(box), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert (wide.width, wide.height) != (wide.bucket_width, wide.bucket_height)
    torch.testing.assert_close(batch["pixel_values"][0], expected)
    assert batch["target_size"][0].tolist() == [wide.bucket_height, wide.bucket_width]


def test_order_is_a_function_of_seed_and_epoch(dataset):
    first = epoch_ids(dataset, epoch=0, seed=5)
    assert epoch_ids(dataset, epoch=0, seed=5) == first
    assert epoch_ids(dataset, epoch=1, seed=5) != first
    assert epoch_ids(dataset, epoch=0, seed=6) != first
    with DatasetIndex(dataset.index) as index:
        source = DatasetBatches(index, dataset, batch_size=2, seed=5)
        captions = [b["captions"] for b in source.epoch_batches(0)]
        assert [b["captions"] for b in source.epoch_batches(0)] == captions  # shuffled captions too


def test_ranks_get_distinct_slices_of_the_same_global_batches(dataset):
    whole = epoch_ids(dataset, batch_size=4, seed=3)
    ranks = [epoch_ids(dataset, batch_size=2, world_size=2, rank=r, seed=3) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == 6  # 10 per bucket // 4 = 2 per bucket
    for b, global_batch in enumerate(whole):
        assert ranks[0][b] + ranks[1][b] == global_batch
        assert not set(ranks[0][b]) & set(ranks[1][b])


def test_start_batch_reads_nothing_it_skips(dataset, tmp_path):
    config = make_dataset(tmp_path, 30)
    with DatasetIndex(config.index) as index:
        source = DatasetBatches(index, config, batch_size=2, seed=9)
        full = list(source.epoch_batches(2))
        k = 7
        skipped_ids = {i for b in full[:k] for i in b["item_ids"]} - {i for b in full[k:] for i in b["item_ids"]}
        for item in index.get_many(sorted(skipped_ids)):
            Path(item.path).unlink()  # reading a skipped item would now fail
        with pytest.raises(TunelabError, match="run `tunelab prepare` again"):
            list(source.epoch_batches(2))
        resumed = list(source.epoch_batches(2, start_batch=k))
    assert [b["item_ids"] for b in resumed] == [b["item_ids"] for b in full[k:]]
    assert [b["captions"] for b in resumed] == [b["captions"] for b in full[k:]]
    for got, want in zip(resumed, full[k:]):
        torch.testing.assert_close(got["pixel_values"], want["pixel_values"])


def test_repeats_from_n_name_folders(tmp_path):
    config = make_dataset(tmp_path, 12, repeat_folder="3_thing", captions={"shuffle_caption": True},
                          tags_of=lambda i: ", ".join(f"t{i}_{k}" for k in range(6)))  # fmt: skip
    with DatasetIndex(config.index) as index:
        repeated = {it.id for it in index.iter_items() if "3_thing" in it.path}
        source = DatasetBatches(index, config, batch_size=1, seed=0)
        batches = list(source.epoch_batches(0))
    counts = Counter(i for b in batches for i in b["item_ids"])
    assert len(batches) == 6 + 6 * 3
    assert all(counts[i] == (3 if i in repeated else 1) for i in counts)
    captions_of = {}
    for b in batches:
        captions_of.setdefault(b["item_ids"][0], set()).add(b["captions"][0])
    assert sum(len(captions_of[i]) for i in repeated) > len(repeated) * 2  # each appearance shuffled on its own


def test_latents_come_from_the_cache(tmp_path):
    config = make_dataset(tmp_path, 12, cache={"latents": True})
    torch.manual_seed(0)
    from tunelab.models.tiny import tiny_vae

    vae = tiny_vae().eval()
    with DatasetIndex(config.index) as index:
        build_latent_cache(index, vae, config.cache, progress=False)
    pixel_source = DatasetBatches(DatasetIndex.open_existing(config.index), config, batch_size=2, seed=4)
    latent_source = open_batches(config, batch_size=2, seed=4)
    for with_pixels, with_latents in zip(pixel_source.epoch_batches(1), latent_source.epoch_batches(1)):
        assert with_pixels["item_ids"] == with_latents["item_ids"] and "pixel_values" not in with_latents
        with torch.no_grad():
            expected = vae.encode(with_pixels["pixel_values"]).latent_dist.mean
        torch.testing.assert_close(with_latents["latents"], expected, rtol=1e-4, atol=1e-5)
    latent_source.close()
    pixel_source.close()
    assert isinstance(latent_source.latent_cache, LatentCache)
    open_batches(config, batch_size=2, components=SimpleNamespace(vae=vae)).close()  # the VAE that made it
    torch.manual_seed(1)
    with pytest.raises(TunelabError, match="built with other settings"):
        open_batches(config, batch_size=2, components=SimpleNamespace(vae=tiny_vae()))


def test_trainer_micro_batches_resume_mid_epoch_continues_identically(dataset):
    from itertools import islice

    from tunelab.train.batches import DataPosition, micro_batches

    with DatasetIndex(dataset.index) as index:
        source = DatasetBatches(index, dataset, batch_size=2, seed=11)
        per_epoch = source.batches_per_epoch()
        position = DataPosition()
        straight = [b["item_ids"] for b in islice(micro_batches(source, position), per_epoch + 5)]
        assert (position.epoch, position.batch) == (1, 5)
        resumed_at = DataPosition(epoch=1, batch=2)  # what a checkpoint restores
        resumed = [b["item_ids"] for b in islice(micro_batches(source, resumed_at), 3)]
    assert resumed == straight[per_epoch + 2 : per_epoch + 5]
    assert straight[per_epoch : per_epoch + 5] != straight[:5]  # a new epoch, a new order


def test_worker_threads_give_the_same_batches(dataset):
    with DatasetIndex(dataset.index) as index:
        plain = list(DatasetBatches(index, dataset, batch_size=3, seed=2).epoch_batches(1, start_batch=2))
        threaded_source = DatasetBatches(index, dataset, batch_size=3, seed=2, workers=2)
        threaded = list(threaded_source.epoch_batches(1, start_batch=2))
        threaded_source.pool.shutdown()
    assert len(plain) == len(threaded) == 7
    for a, b in zip(plain, threaded):
        assert a["item_ids"] == b["item_ids"] and a["captions"] == b["captions"]
        assert torch.equal(a["pixel_values"], b["pixel_values"])
