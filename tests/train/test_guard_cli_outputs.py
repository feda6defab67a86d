"""NaN/inf guard, what a run writes next to its outputs, and the `tunelab train` command."""

import json
import math

import pytest
import torch
from tiny_run import changed, small_sdxl, tiny_items
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.models.io import save_model
from tunelab.train.checkpoint import check_finite


def poisoned_items():
    items = tiny_items(4)
    items["latents"][2, 0, 0, 0] = float("nan")  # every batch of 4 holds it
    return items


def test_nonfinite_loss_stops_with_a_clear_message(train_tiny):
    with pytest.raises(TunelabError, match=r"step 1: loss nan .* not finite; stopped"):
        train_tiny(items=poisoned_items())


def test_nonfinite_steps_can_be_skipped_and_nothing_changes(train_tiny):
    c, before, run = train_tiny(items=poisoned_items(), train={"nonfinite": "skip", "max_steps": 2})
    assert run.progress.step == 2
    for name, module in c.named_parts().items():
        assert changed(before[name], module) == set(), name


def test_non_finite_weights_are_never_saved():
    c = small_sdxl()
    check_finite({"unet": c.unet})
    with torch.no_grad():
        c.unet.conv_in.weight[0, 0, 0, 0] = math.inf
    with pytest.raises(TunelabError, match="unet.conv_in.weight has non-finite values"):
        check_finite({"unet": c.unet})


def test_run_writes_config_versions_seed_tensorboard_and_checkpoint(train_tiny):
    # 16 items / batch 4 = 4 batches per epoch: checkpoints at the epoch end (step 4) and the final step (5)
    trained, _, run = train_tiny(train={"seed": 7, "max_steps": 5}, checkpoint={"every_n_epochs": 1},
                                 logging={"tensorboard": True})
    out = run.config.train.output_dir
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 7 and record["config"]["train"]["max_steps"] == 5
    assert record["launch"] == {"processes": 1, "engine": "one process", "global_batch": 4, "fsdp": None}
    assert {"torch", "diffusers", "transformers", "accelerate", "tunelab"} <= record["versions"].keys()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/raw", "loss/smoothed", "grad_norm", "images_per_s", "lr/unet"} <= tags
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    final = out / "checkpoints/step-000005"
    assert json.loads((out / "checkpoints/step-000004/state/progress.json").read_text()) == \
        {"step": 4, "epoch": 1, "batch": 0, "nonfinite_skipped": 0}
    assert json.loads((final / "state/progress.json").read_text()) == {"step": 5, "epoch": 1, "batch": 1,
                                                                           "nonfinite_skipped": 0}
    # the final checkpoint holds the weights the run ended with: the model folder loads back to them tensor for
    # tensor, and the training state's copy of each trained part is the same
    from safetensors.torch import load_file

    from tunelab.models.io import load_model

    saved = load_model(final / "model")
    for name, module in trained.named_parts().items():
        expected = module.state_dict()
        assert same_tensors(saved.named_parts()[name].state_dict(), expected), name
        if (final / f"state/{name}.safetensors").exists():
            assert same_tensors(load_file(final / f"state/{name}.safetensors"), expected), name
    assert (final / "state/unet.safetensors").exists()
    assert not list((out / "checkpoints").glob(".*"))  # no temporary folder left


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_dry_run_prints_the_table_and_trains_nothing(tmp_path):
    model = save_model(small_sdxl(), tmp_path / "base")
    config = tmp_path / "run.toml"
    config.write_text('[model]\npath = "base"\n[train]\nmax_steps = 5\noutput_dir = "out"\n'
                      '[text_encoder]\nmode = "on"\n[unet]\npreset = "attn-mlp"\n')
    result = CliRunner().invoke(app, ["train", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "unet.down_blocks.1.attentions" in result.output and "text_encoder_2: trained" in result.output
    assert "total:" in result.output and not (tmp_path / "out").exists()
    assert model.exists()


def test_bad_run_config_is_one_line(tmp_path):
    from tunelab.train.config import load_run_config

    config = tmp_path / "run.toml"
    config.write_text('[model]\npath = "base"\n[train]\nmax_steps = 5\n[unet]\npreset = "half"\n')
    with pytest.raises(TunelabError, match=r"run.toml: unet.preset: Input should be 'full'"):
        load_run_config(config)
    config.write_text('[model]\npath = "base"\n[train]\nmax_step = 5\n')
    with pytest.raises(TunelabError, match=r"train.max_step: unknown key"):
        load_run_config(config)
