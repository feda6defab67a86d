"""`tunelab train` on a real dataset: toy images + tags → prepare (SQLite index) → latent and text-embedding caches
→ the dataset loader → training, with the text encoders offloaded (cached embeddings) and an exact resume."""

import pytest
import torch
from tiny_run import small_sdxl
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.cache_runner import build_caches
from tunelab.data.config import load_data_config
from tunelab.data.prepare import prepare_dataset
from tunelab.models.io import save_model
from tunelab.toy.world import write_dataset

CONFIG = """
[model]
path = "base"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
cache = {{ latents = true, text_embeddings = true }}
[train]
output_dir = "{out}"
max_steps = {steps}
batch_size = 4
[unet]
learning_rate = 1e-3
[checkpoint]
every_n_steps = 2
[logging]
progress_bar = false
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    write_dataset(root / "images", "finetune", count=16, progress=False)
    base = small_sdxl()
    save_model(base, root / "base")
    config = root / "prepare.toml"
    config.write_text(CONFIG.format(out="unused", steps=1))
    prepare_dataset(load_data_config(config), progress=False)
    build_caches(config, progress=False)
    return root, base


def train(root, name: str, steps: int, *extra: str):
    config = root / f"{name}-{steps}.toml"
    config.write_text(CONFIG.format(out=name, steps=steps))
    result = CliRunner().invoke(app, ["train", str(config), *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return root / name / "checkpoints"


def test_train_from_the_dataset_loader_with_cached_text_and_exact_resume(project):
    root, base = project
    straight = train(root, "straight", 4)
    train(root, "resumed", 2)
    resumed = train(root, "resumed", 4, "--resume", "latest")
    a = load_file(straight / "step-000004/state/unet.safetensors")
    b = load_file(resumed / "step-000004/state/unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(straight / "step-000002/state/unet.safetensors")
    assert not torch.equal(a["conv_in.weight"], first["conv_in.weight"])  # it trained
    # the text encoders were never in memory while training, and come back intact in the checkpoint model
    saved = load_file(straight / "step-000004/model/text_encoder_2/model.safetensors")
    original = base.text_encoders[1].state_dict()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    assert not (straight / "step-000004/state/text_encoder.safetensors").exists()  # mode off: not trained
    assert not list((root / "straight").glob(".offloaded*"))  # the offloaded weights' files are gone


def test_validation_runs_at_its_cadence_and_at_checkpoints(project):
    """The loop's validation hook: val/folder scalars at every 3rd step and at the step-2/4 checkpoints."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = project
    config = root / "validated.toml"
    config.write_text(CONFIG.format(out="validated", steps=4)
                      + '[validation]\nevery_n_steps = 3\nheld_out = false\nfolder = "images"\nfolder_size = 32\n'
                      + "bands = 2\n")
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 0, (result.output, result.exception)
    events = EventAccumulator(str(root / "validated/tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/folder/mean")] == [2, 3, 4]
    assert {"val/folder/band_0", "val/folder/band_1"} <= set(events.Tags()["scalars"])
