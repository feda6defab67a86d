"""Beyond one node: the shipped accelerate configs are configs accelerate reads (every key an option it knows, the
machine and process counts they say); `tunelab train` under `accelerate launch` with an FSDP config trains sharded
(2 CPU processes, gloo): the same losses as one process, checkpoints written shard by shard that resume exactly after
a SIGKILL (and in one unsharded process), a model export holding the whole weights; what it does not run (DeepSpeed,
FSDP version 1, optimizers that cannot step sharded tensors, resuming an unsharded checkpoint) is refused in one
line before any step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from safetensors.torch import load_file
from test_resume_and_ddp import DDP_TOML, ENV, accelerate_launch, logged_steps
from tiny_run import base_config, small_sdxl

from tunelab.errors import TunelabError
from tunelab.train.config import RunConfig
from tunelab.train.recipe import make_accelerator

EXAMPLES = Path(__file__).parents[2] / "examples" / "accelerate"
EXPECTED = {  # file: (distributed_type, machines, processes)
    "ddp_1node_8gpu.yaml": ("MULTI_GPU", 1, 8),
    "fsdp_2node_8gpu.yaml": ("FSDP", 2, 16),
    "zero2_1node_8gpu.yaml": ("DEEPSPEED", 1, 8),
}


def test_example_configs_are_what_accelerate_reads():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)
    options = {o.lstrip("-") for action in launch_command_parser()._actions for o in action.option_strings}
    for name, (kind, machines, processes) in EXPECTED.items():
        config = load_config_from_file(str(EXAMPLES / name))  # refuses keys its config class lacks
        assert (str(config.distributed_type).split(".")[-1], config.num_machines, config.num_processes) == \
            (kind, machines, processes), name  # fmt: skip
        engine_keys = set(config.fsdp_config) | set(config.deepspeed_config)
        assert engine_keys <= options, (name, engine_keys - options)  # each becomes an `accelerate launch` option
    fsdp = load_config_from_file(str(EXAMPLES / "fsdp_2node_8gpu.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.parametrize("environment, refused", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "asks for DeepSpeed"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "asks for FSDP version 1"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "EVERYTHING"}, "EVERYTHING"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "optimizer": "adafactor"}, "'adafactor' with FSDP"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "optimizer": "adamw8bit"}, "'adamw8bit' with FSDP"),
])
def test_what_a_sharded_launch_cannot_run_is_refused_in_one_line(train_tiny, monkeypatch, environment, refused):
    environment = dict(environment)
    optimizer = environment.pop("optimizer", "adamw")
    for variable, value in environment.items():  # what `accelerate launch --config_file` sets for such a config
        monkeypatch.setenv(variable, value)
    with pytest.raises(TunelabError) as error:
        train_tiny(optimizer={"type": optimizer})
    assert refused in str(error.value) and "\n" not in str(error.value)


def test_fsdp_request_leaves_accelerate_without_its_plugin(tmp_path, monkeypatch):
    """accelerate must not shard (or, on CPU, silently not shard): tunelab does, so the Accelerator gets none."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    accelerator = make_accelerator(RunConfig.model_validate(base_config(tmp_path / "run")))
    assert accelerator.distributed_type.name == "NO" and os.environ["ACCELERATE_USE_FSDP"] == "true"


CPU_ENV = {**ENV, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path (gloo) on any machine: the config says use_cpu
FSDP_CONFIG = """
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
main_process_port: 0
mixed_precision: 'no'
use_cpu: true
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: SIZE_BASED_WRAP
  fsdp_min_num_params: 20000  # the tiny UNet's blocks and the text encoders' encoders get their own shard groups
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
"""
# the DDP test's run, with EMA, checkpoints every 3 steps and samples every 4 (gathered from the shards)
RUN_TOML = DDP_TOML.replace("max_steps = 10", "max_steps = 8\nema_decay = 0.9").replace(
    "every_n_epochs = 0\n", "every_n_epochs = 0\nevery_n_steps = 3\n") + """sample_every_n_steps = 4
sample_prompts = ["red circle"]
sample_steps = 2
"""


def kill_launch(launcher: subprocess.Popen) -> None:
    """SIGKILL to the launcher and every worker (torch's launcher starts each worker in its own session)."""
    import psutil

    for process in [*psutil.Process(launcher.pid).children(recursive=True), psutil.Process(launcher.pid)]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_fsdp_launch_trains_sharded_like_one_process_and_resumes_exactly_after_sigkill(tmp_path):
    """`accelerate launch --config_file fsdp.yaml -m tunelab.cli train`: 2 processes, each holding half of every
    trained tensor (UNet and both text encoders, and the UNet's EMA), a global batch of 2 from the real loader; one
    process with the whole batch logs the same losses and exports nearly the same EMA weights. A launch killed
    (SIGKILL, every process) after its first checkpoint resumes with `--resume latest` to the straight run's state bit
    for bit; one unsharded process resumes the same checkpoint."""
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.models.io import save_model
    from tunelab.toy.world import write_dataset
    from tunelab.train.sharded_checkpoint import merged_weights

    save_model(small_sdxl(), tmp_path / "base")
    write_dataset(tmp_path / "images", "finetune", count=16, progress=False)
    (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG)
    for name, batch_size in (("sharded", 1), ("killed", 1), ("one", 2), ("unsharded_resume", 2), ("refused", 1)):
        (tmp_path / f"{name}.toml").write_text(RUN_TOML.format(name=name, batch_size=batch_size))
    prepared = CliRunner().invoke(app, ["prepare", str(tmp_path / "one.toml"), "--quiet"])
    assert prepared.exit_code == 0, prepared.output

    def start(*command: str) -> subprocess.Popen:
        return subprocess.Popen(list(command), env=CPU_ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def finish(process: subprocess.Popen) -> str:
        try:
            output, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            kill_launch(process)
            raise
        assert process.returncode == 0, output
        return output

    def sharded(*args: str) -> subprocess.Popen:
        launch = accelerate_launch(2, "-m", "tunelab.cli", "train", *args)
        return start(*launch[:2], "--config_file", "fsdp.yaml", "--main_process_port", "0", *launch[-(len(args) + 3):])

    straight, killed = sharded("sharded.toml"), sharded("killed.toml")
    one = start(sys.executable, "-m", "tunelab.cli", "train", "one.toml")
    first = tmp_path / "killed/checkpoints/step-000003"
    while not first.exists() and killed.poll() is None:
        time.sleep(0.02)
    kill_launch(killed)
    killed.communicate()
    assert first.is_dir() and not (tmp_path / "killed/checkpoints/step-000008").exists()
    finish(straight), finish(one)

    resumed = sharded("killed.toml", "--resume", "latest")
    unsharded = start(sys.executable, "-m", "tunelab.cli", "train", "unsharded_resume.toml", "--resume", str(first))
    refused = sharded("refused.toml", "--resume", str(tmp_path / "one/checkpoints/step-000003"))
    finish(resumed), finish(unsharded)
    output, _ = refused.communicate(timeout=300)  # an unsharded run's checkpoint: refused in one line, no step run
    assert refused.returncode != 0 and output.count("was written by an unsharded run") == 2, output
    # no worker's traceback (the "[rankN]:" lines); the launcher's own report of failed workers is accelerate's
    assert "[rank" not in output and not (tmp_path / "refused/checkpoints").exists()

    end = "checkpoints/step-000008"
    state = tmp_path / "sharded" / end / "state"
    assert sorted(p.name for p in (state / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not list(state.glob("*.safetensors")) and json.loads((state / "progress.json").read_text())["step"] == 8
    launch = json.loads((tmp_path / "sharded/run.json").read_text())["launch"]
    assert launch["processes"] == 2 and launch["engine"] == "fsdp" and launch["global_batch"] == 2
    assert launch["fsdp"]["wrap_policy"] == "SIZE_BASED_WRAP" and launch["fsdp"]["min_num_params"] == 20000
    # sharded against one process: every step's loss (the same global batches, noise and weights)
    losses = {name: logged_steps(tmp_path / name) for name in ("one", "sharded", "killed", "unsharded_resume")}
    assert len(losses["one"]) == 8 and losses["one"][-1][1] != losses["one"][0][1]
    assert [v for _, v in losses["sharded"]] == pytest.approx([v for _, v in losses["one"]], abs=1e-5)
    # the killed launch, resumed: the straight run's steps and state, bit for bit
    assert losses["killed"][-5:] == losses["sharded"][3:] and [s for s, _ in losses["killed"]] == list(range(1, 9))
    for key in ("model", "ema"):  # the trained weights and the EMA weights, from the shards
        whole = {name: merged_weights(tmp_path / name / end / "state/sharded", key) for name in ("sharded", "killed")}
        assert whole["sharded"].keys() == whole["killed"].keys()
        assert all(torch.equal(whole["sharded"][k], whole["killed"][k]) for k in whole["sharded"]), key
    raw, ema = (merged_weights(tmp_path / "sharded" / end / "state/sharded", key) for key in ("model", "ema"))
    assert {k.split(".")[0] for k in raw} == {"unet", "text_encoder", "text_encoder_2"} and set(ema) == {
        k for k in raw if k.startswith("unet.")}
    # the model export holds the whole weights gathered from the shards: the UNet's EMA weights, the text encoders'
    for part, file, weights in (("unet", "unet/diffusion_pytorch_model.safetensors", ema),
                                ("text_encoder_2", "text_encoder_2/model.safetensors", raw)):
        exported = load_file(tmp_path / "sharded" / end / "model" / file)
        assert all(torch.equal(exported[k], weights[f"{part}.{k}"]) for k in exported), part
    assert not all(torch.equal(ema[k], raw[k]) for k in ema)
    # the one-process run's EMA export: the same up to float rounding amplified by Adam (as for DDP)
    one, base = (load_file(folder / "unet/diffusion_pytorch_model.safetensors")
                 for folder in (tmp_path / "one" / end / "model", tmp_path / "base"))
    sharded_unet = torch.cat([ema[f"unet.{k}"].flatten() for k in sorted(one)])
    one_unet, base_unet = (torch.cat([w[k].flatten() for k in sorted(one)]) for w in (one, base))
    assert (one_unet - sharded_unet).norm() < 0.01 * (one_unet - base_unet).norm()
    assert sorted(p.name for p in (tmp_path / "sharded/samples").iterdir()) == ["step-000004", "step-000008"]
    # one unsharded process resumes the sharded checkpoint (torch.distributed.checkpoint reshards on load)
    assert [v for _, v in losses["unsharded_resume"][-5:]] == pytest.approx([v for _, v in losses["sharded"][3:]], abs=1e-5)
