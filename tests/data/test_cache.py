"""Latent cache: values equal the VAE's latent_dist.mean of the bucketed pixels, reuse, invalidation, a SIGKILL
mid-way then resume, and verify() naming truncated / corrupt shards and leftovers. Real tiny VAE, real files."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_dataset import make_dataset

from tunelab.data.cache import LatentCache, build_latent_cache, latent_key, verify_caches
from tunelab.data.index import DatasetIndex
from tunelab.data.pixels import item_pixels
from tunelab.data.shards import ShardStore
from tunelab.errors import TunelabError
from tunelab.models.tiny import tiny_vae


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return tiny_vae().eval()


def expected_latent(vae, item):
    with torch.no_grad():
        return vae.encode(item_pixels(item)[None]).latent_dist.mean[0]


def all_items(config):
    with DatasetIndex(config.index) as index:
        return list(index.iter_items(split=None))


def test_latents_are_the_vae_mean_of_bucketed_pixels_and_are_reused(tmp_path, vae):
    config = make_dataset(tmp_path, 13)
    with DatasetIndex(config.index) as index:
        stats = build_latent_cache(index, vae, config.cache, progress=False)
    items = all_items(config)
    assert (stats.items, stats.computed, stats.reused, stats.shards_written) == (13, 13, 0, 3)  # 5 + 5 + 3
    cache = LatentCache.for_config(config.cache)
    for item in items:
        latent = cache.latents([item])[0]
        assert latent.shape == (4, item.bucket_height // 4, item.bucket_width // 4)
        torch.testing.assert_close(latent, expected_latent(vae, item), rtol=1e-4, atol=1e-5)
    assert len({it.bucket for it in items}) == 3
    shards = sorted(p.name for p in (config.cache.dir / "latents").glob("shard-*"))
    mtimes = {p: (config.cache.dir / "latents" / p).stat().st_mtime_ns for p in shards}
    with DatasetIndex(config.index) as index:
        again = build_latent_cache(index, vae, config.cache, progress=False)
    assert (again.computed, again.reused, again.shards_written) == (0, 13, 0)
    assert {p: (config.cache.dir / "latents" / p).stat().st_mtime_ns for p in shards} == mtimes
    assert verify_caches(config.cache) == {"latents": []}


def test_changed_image_is_recomputed_and_stale_entry_refused(tmp_path, vae):
    from make_images import write_image

    from tunelab.data.prepare import prepare_dataset

    config = make_dataset(tmp_path, 6)
    with DatasetIndex(config.index) as index:
        build_latent_cache(index, vae, config.cache, progress=False)
    old = next(it for it in all_items(config) if it.path.endswith("img004.png"))
    write_image(Path(old.path), 48, 24, seed=99)  # same size, new content
    prepare_dataset(config, progress=False)
    new = next(it for it in all_items(config) if it.path.endswith("img004.png"))
    assert latent_key(new) != latent_key(old)
    cache = LatentCache.for_config(config.cache)
    with pytest.raises(TunelabError, match="changed since it was cached"):
        cache.latents([new])
    with DatasetIndex(config.index) as index:
        stats = build_latent_cache(index, vae, config.cache, progress=False)
    assert (stats.computed, stats.reused) == (1, 5)
    cache = LatentCache.for_config(config.cache)
    torch.testing.assert_close(cache.latents([new])[0], expected_latent(vae, new), rtol=1e-4, atol=1e-5)


def test_other_vae_is_refused(tmp_path, vae):
    config = make_dataset(tmp_path, 3)
    with DatasetIndex(config.index) as index:
        build_latent_cache(index, vae, config.cache, progress=False)
        torch.manual_seed(1)
        with pytest.raises(TunelabError, match="other settings .*vae"):
            build_latent_cache(index, tiny_vae().eval(), config.cache, progress=False)


def test_verify_names_truncated_corrupt_and_leftover_shards_and_repair_recomputes(tmp_path, vae):
    config = make_dataset(tmp_path, 15)
    with DatasetIndex(config.index) as index:
        build_latent_cache(index, vae, config.cache, progress=False)
    folder = config.cache.dir / "latents"
    first, second, third = sorted(p for p in folder.glob("shard-*"))
    first.write_bytes(first.read_bytes()[:-100])  # truncated
    data = bytearray(second.read_bytes())
    data[-7] ^= 0xFF  # one flipped byte in the tensor data
    second.write_bytes(bytes(data))
    (folder / ".shard-000009.safetensors.abc.tmp").write_bytes(b"half")  # a killed atomic write
    problems = {p.shard: p.problem for p in verify_caches(config.cache)["latents"]}
    assert set(problems) == {first.name, second.name, ".shard-000009.safetensors.abc.tmp"}
    assert "truncated" in problems[first.name] and "corrupt" in problems[second.name]
    verify_caches(config.cache, repair=True)
    assert verify_caches(config.cache) == {"latents": []}
    with DatasetIndex(config.index) as index:
        stats = build_latent_cache(index, vae, config.cache, progress=False)
    assert (stats.computed, stats.reused) == (10, 5)
    cache = LatentCache.for_config(config.cache)
    for item in all_items(config):
        torch.testing.assert_close(cache.latents([item])[0], expected_latent(vae, item), rtol=1e-4, atol=1e-5)


_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from diffusers import AutoencoderKL
    from tunelab.data.config import DataConfig
    from tunelab.data.index import DatasetIndex
    from tunelab.data.cache import build_latent_cache
    config = DataConfig.model_validate_json(open(sys.argv[1]).read())
    vae = AutoencoderKL.from_pretrained(sys.argv[2]).eval()
    written = []
    def held_after_two(name):
        written.append(name)
        print(name, flush=True)
        if len(written) == 2:
            sys.stdin.readline()  # the parent never answers: it kills this process here, mid-build
    with DatasetIndex(config.index) as index:
        build_latent_cache(index, vae, config.cache, progress=False, on_shard=held_after_two)
    print("finished", flush=True)
""")


def test_killed_mid_way_then_resumed_without_recomputing_finished_shards(tmp_path, vae):
    config = make_dataset(tmp_path, 24)  # 5 shards of ≤5
    (tmp_path / "config.json").write_text(config.model_dump_json())
    vae.save_pretrained(tmp_path / "vae")
    # The child reports each finished shard on a pipe and, after the second, waits on its stdin: the kill lands
    # while it is held there, with exactly two of five shards done, however slow the machine.
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "config.json"), str(tmp_path / "vae")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    written = [child.stdout.readline().strip() for _ in range(2)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdin.close()
    child.stdout.close()
    assert all(w.startswith("shard-") for w in written), written
    folder = config.cache.dir / "latents"
    with ShardStore(folder, create=False) as store:
        done = store.shard_names()
        reused = store.count()
    assert sorted(done) == sorted(written) and reused == 10
    before = {name: (folder / name).read_bytes() for name in done}
    with DatasetIndex(config.index) as index:
        stats = build_latent_cache(index, vae, config.cache, progress=False)
    assert (stats.reused, stats.computed) == (reused, 24 - reused)
    assert all((folder / name).read_bytes() == data for name, data in before.items())  # not rewritten
    assert verify_caches(config.cache) == {"latents": []}
    cache = LatentCache.for_config(config.cache)
    for item in all_items(config):
        torch.testing.assert_close(cache.latents([item])[0], expected_latent(vae, item), rtol=1e-4, atol=1e-5)
