"""The user's path from issue 19, end to end: `tunelab convert` the toy base to a single file, then `tunelab prepare`
(latent + text-embedding caches) and `tunelab train` (5 steps, single-file checkpoint) with `path` = that file.
The cached embeddings are the shipped folder's own encoders' (the pooled one comes from text_encoder_2, the encoder
a wrong guess swapped), and the trained checkpoint loads back with both text encoders intact."""

import os

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.cache import TextSettings
from tunelab.data.loader import open_batches
from tunelab.models.io import load_model
from tunelab.models.text_conditioning import encode_prompts
from tunelab.toy.base_model import TOY_BASE_DIR
from tunelab.toy.world import write_dataset
from tunelab.train.config import load_run_config

CONFIG = """
[model]
path = "toy.safetensors"
[data]
index = "index.sqlite"
sources = [{ type = "folder", path = "images" }]
buckets = { resolution = 32, step = 8, min_side = 16, max_side = 64 }
cache = { latents = true, text_embeddings = true }
[train]
output_dir = "run"
max_steps = 5
batch_size = 4
[unet]
learning_rate = 1e-3
[checkpoint]
format = "single-file"
save_state = false
[logging]
progress_bar = false
tensorboard = false
"""


@pytest.fixture(autouse=True)
def tunelab_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_prepare_and_train_from_the_single_file_toy_base(tmp_path):
    invoke("convert", str(TOY_BASE_DIR), str(tmp_path / "toy.safetensors"), "--to", "single-file")
    write_dataset(tmp_path / "images", "finetune", count=8, progress=False)
    (tmp_path / "run.toml").write_text(CONFIG)
    invoke("prepare", str(tmp_path / "run.toml"), "--quiet")
    invoke("train", str(tmp_path / "run.toml"))

    folder = load_model(TOY_BASE_DIR)
    config = load_run_config(tmp_path / "run.toml")
    settings = TextSettings(config.train.clip_skip, config.train.max_chunks, config.train.empty_caption_as_zeros)
    source = open_batches(config.data, batch_size=4, components=folder, text_settings=settings)
    compared = 0
    for batch in source.epoch_batches(0):
        with torch.no_grad():
            live = encode_prompts(folder, batch["captions"], clip_skip=settings.clip_skip,
                                  max_chunks=settings.max_chunks, empty_as_zeros=settings.empty_as_zeros)
        torch.testing.assert_close(batch["prompt_embeds"], live.prompt_embeds, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["pooled_prompt_embeds"], live.pooled_prompt_embeds, rtol=1e-5, atol=1e-5)
        compared += len(batch["captions"])
    source.close()
    assert compared == 8

    trained = load_model(tmp_path / "run" / "checkpoints" / "step-000005" / "model.safetensors")
    for te, te_trained in zip(folder.text_encoders, trained.text_encoders, strict=True):  # mode off: untouched
        reference = te.state_dict()
        assert all(torch.equal(v, reference[k]) for k, v in te_trained.state_dict().items())
    assert not torch.equal(trained.unet.conv_in.weight, folder.unet.conv_in.weight)  # it trained
    assert torch.isfinite(trained.unet.conv_in.weight).all()
