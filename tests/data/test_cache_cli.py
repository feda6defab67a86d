"""`tunelab prepare` / `tunelab cache CONFIG` (build latents + text embeddings from a saved tiny SDXL), `--verify` and
`tunelab prepare --verify` naming a damaged shard, `--repair` then a rebuild. Real files through the typer app."""

import pytest
from tiny_dataset import make_dataset
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.models.io import save_model

RUN_TOML = """
[model]
path = "model"
[train]
epochs = 1
[text_encoder]
mode = "{mode}"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
images = {{ min_side = 16 }}
cache = {{ latents = true, text_embeddings = true, shard_items = 4 }}
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_sdxl_model):
    folder = tmp_path_factory.mktemp("model") / "model"
    save_model(tiny_sdxl_model, folder)
    return folder


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cache_build_verify_damage_repair(tmp_path, saved_model):
    make_dataset(tmp_path, 9)
    (tmp_path / "model").symlink_to(saved_model, target_is_directory=True)
    (tmp_path / "run.toml").write_text(RUN_TOML.format(mode="off"))
    built = run("prepare", tmp_path / "run.toml", "--quiet")  # [data.cache] asks for caches: prepare builds them
    assert built.exit_code == 0, built.output
    assert "9 items indexed" in built.output and "0 images read, 9 unchanged" in built.output
    assert "latents: 9 items, 9 computed" in built.output and "text embeddings: 9 items, 9 computed" in built.output
    again = run("cache", tmp_path / "run.toml", "--quiet")
    assert "latents: 9 items, 0 computed, 9 already cached" in again.output
    ok = run("prepare", tmp_path / "run.toml", "--verify")
    assert ok.exit_code == 0 and "latents: ok" in ok.output and "text: ok" in ok.output
    shard = sorted((tmp_path / "cache" / "latents").glob("shard-*"))[1]
    shard.write_bytes(shard.read_bytes()[:50])
    bad = run("cache", tmp_path / "run.toml", "--verify")
    assert bad.exit_code == 1 and f"{shard.name}: truncated" in bad.output and "text: ok" in bad.output
    cache = tmp_path / "cache"
    untouched = {p: p.read_bytes() for p in sorted(cache.rglob("*.safetensors")) if p != shard}
    repaired = run("cache", tmp_path / "run.toml", "--repair")
    assert repaired.exit_code == 0  # what is left is sound; it reports what it found, did, and what to recompute
    assert f"latents: 1 problem(s)\n  {shard.name}: truncated" in repaired.output and "text: ok" in repaired.output
    assert "repaired: bad shards dropped" in repaired.output and "to recompute: latents 4 items" in repaired.output
    assert not shard.exists() and {p: p.read_bytes() for p in untouched if p.exists()} == untouched  # only it went
    incomplete = run("prepare", tmp_path / "run.toml", "--verify")  # sound shards, but 4 items are missing now
    assert incomplete.exit_code == 1 and "latents: incomplete (5 of 9 items cached, 4 missing)" in incomplete.output
    rebuilt = run("cache", tmp_path / "run.toml", "--quiet")
    assert "latents: 9 items, 4 computed, 5 already cached" in rebuilt.output
    assert "text embeddings: 9 items, 0 computed, 9 already cached" in rebuilt.output  # the sound store was kept
    empty_chunk = cache / "text" / "empty_chunk.safetensors"
    empty_chunk.write_bytes(b"\0" * 10)
    broken = run("cache", tmp_path / "run.toml", "--verify")
    assert broken.exit_code == 1 and "empty_chunk.safetensors: unreadable" in broken.output
    text_shards = {p: p.read_bytes() for p in (cache / "text").glob("shard-*")}
    repaired = run("cache", tmp_path / "run.toml", "--repair")
    assert repaired.exit_code == 0 and "latents: ok" in repaired.output
    assert "empty_chunk.safetensors: unreadable" in repaired.output and not empty_chunk.exists()
    assert {p: p.read_bytes() for p in text_shards if p.exists()} == text_shards  # the shards themselves were sound
    again = run("cache", tmp_path / "run.toml", "--quiet")
    assert again.exit_code == 0 and "text embeddings: 9 items, 0 computed, 9 already cached" in again.output
    assert empty_chunk.stat().st_size > 10  # encoded again
    assert run("cache", tmp_path / "run.toml", "--verify").exit_code == 0


def test_text_cache_refused_when_text_encoders_train(tmp_path, saved_model):
    make_dataset(tmp_path, 3)
    (tmp_path / "model").symlink_to(saved_model, target_is_directory=True)
    (tmp_path / "run.toml").write_text(RUN_TOML.format(mode="on"))
    result = run("cache", tmp_path / "run.toml", "--quiet")
    assert result.exit_code != 0
    assert 'text-embedding cache refused: text encoders are trained (text_encoder.mode = "on")' in str(result.exception)
