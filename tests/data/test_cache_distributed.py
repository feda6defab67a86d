"""`tunelab cache` split between 2 processes (`accelerate launch`, gloo on CPU): one process killed while it writes
a shard, the launch run again, and the caches equal a 1-process build item for item (latents and text embeddings,
bit for bit: each process encodes the same batches the single process does)."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny_dataset import make_dataset
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.cache import EMPTY_CHUNK, verify_caches
from tunelab.data.cache_config import CacheConfig
from tunelab.data.index import DatasetIndex
from tunelab.data.shards import PENDING, ShardStore
from tunelab.models.io import save_model

RUN_TOML = """
[model]
path = "model"
[train]
epochs = 1
[data]
index = "index.sqlite"
sources = [{ type = "folder", path = "images" }]
buckets = { resolution = 32, step = 8, min_side = 16, max_side = 64 }
images = { min_side = 16 }
cache = { latents = true, text_embeddings = true, shard_items = 3, batch_size = 2 }
"""
ITEMS = 14  # 5 runs of 3 items (the last one short) between 2 processes
# A process that kills itself (SIGKILL) as it starts writing its second latent shard: a temp file is all that is
# left of it; its first shard is finished, the other process is stopped by the launcher wherever it was.
KILLING_CACHE = textwrap.dedent("""
    import os, signal, sys
    def hook(name, args):
        if name == "open" and isinstance(args[0], str) and "/latents/.shard-p1-000002.safetensors." in args[0]:
            os.kill(os.getpid(), signal.SIGKILL)
    if os.environ["RANK"] == "1":
        sys.addaudithook(hook)
    from tunelab.cli import app
    app(["cache", "run.toml", "--quiet"])
""")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


def launch(cwd: Path, *program: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", *program]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def dataset(root: Path, model: Path) -> CacheConfig:
    make_dataset(root, ITEMS)
    (root / "model").symlink_to(model, target_is_directory=True)
    (root / "run.toml").write_text(RUN_TOML)
    return CacheConfig(shard_items=3).resolved(root)


def test_two_processes_killed_then_resumed_equal_one_process_item_for_item(tmp_path, tiny_sdxl_model):
    save_model(tiny_sdxl_model, tmp_path / "model")
    one, two = (dataset(tmp_path / name, tmp_path / "model") for name in ("one", "two"))
    built = CliRunner().invoke(app, ["cache", str(tmp_path / "one" / "run.toml"), "--quiet"])
    assert built.exit_code == 0 and f"latents: {ITEMS} items, {ITEMS} computed" in built.output, built.output

    (tmp_path / "two" / "killing_cache.py").write_text(KILLING_CACHE)
    killed = launch(tmp_path / "two", "killing_cache.py")
    assert killed.returncode != 0, killed.stdout + killed.stderr
    latents = two.dir / "latents"
    first = latents / "shard-p1-000001.safetensors"  # rank 1's finished shard: kept, with its catalogue rows
    assert first.exists() and (latents / (first.name + PENDING)).exists(), sorted(p.name for p in latents.iterdir())
    assert not (latents / "shard-p1-000002.safetensors").exists()  # the one it was writing never got its name
    first_bytes = first.read_bytes()

    resumed = launch(tmp_path / "two", "-m", "tunelab.cli", "cache", "run.toml", "--quiet")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    reused = int(resumed.stdout.split(f"latents: {ITEMS} items, ")[1].split(" computed, ")[1].split(" already")[0])
    assert reused >= 3 and f"text embeddings: {ITEMS} items" in resumed.stdout, resumed.stdout
    assert first.read_bytes() == first_bytes and not list(latents.glob("*" + PENDING))  # taken in, not recomputed
    assert not list(latents.glob(".shard-*"))  # the killed write's temp file was cleared
    with ShardStore(latents, create=False) as store:
        assert first.name in store.shard_names()
        assert {name.split("-")[1] for name in store.shard_names()} == {"p0", "p1"}  # both processes wrote
    assert verify_caches(two) == {"latents": [], "text": []}

    with DatasetIndex.open_existing(one.dir.parent / "index.sqlite") as index:
        ids = [item.id for item in index.iter_items(split=None)]  # the same in both: the same files, prepared alike
    assert len(ids) == ITEMS
    for kind, names in (("latents", ["latents"]), ("text", ["prompt_embeds", "pooled_prompt_embeds"])):
        with ShardStore(one.dir / kind, create=False) as a, ShardStore(two.dir / kind, create=False) as b:
            assert a.fingerprint == b.fingerprint and a.keys_of(ids) == b.keys_of(ids) and len(a.keys_of(ids)) == ITEMS
            for item_id, row_a, row_b in zip(ids, a.read(ids, names), b.read(ids, names)):
                assert all(torch.equal(row_a[n], row_b[n]) for n in names), (kind, item_id)
    empty = [load_file(str(c.dir / "text" / EMPTY_CHUNK))["prompt_embeds"] for c in (one, two)]
    assert torch.equal(*empty)
