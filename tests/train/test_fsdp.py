"""Beyond one node: the shipped accelerate configs are configs accelerate reads (every key an option it knows, the
machine and process counts they say); a launch that asks accelerate for FSDP / DeepSpeed is refused with its reason
before any step (on CPU accelerate would silently train unsharded copies; the trainer does not use the sharded
checkpoints yet); and FSDP 2 itself, through torch's `fully_shard` on 2 CPU processes (accelerate selects FSDP only
with GPUs), with tunelab's sharded checkpoints: same losses as 1 process, exact resume, merge into one file."""

import os
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from tiny_run import base_config

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


@pytest.mark.parametrize("variable, engine", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharded_engine_request_is_refused_with_its_reason(tmp_path, monkeypatch, variable, engine):
    config = RunConfig.model_validate(base_config(tmp_path / "run"))
    monkeypatch.setenv(variable, "true")  # what `accelerate launch --config_file` sets for such a config
    with pytest.raises(TunelabError) as refused:
        make_accelerator(config)
    message = str(refused.value)
    assert f"asks for {engine}" in message and "\n" not in message
    if torch.cuda.is_available():
        assert "sharded checkpoints" in message
    else:
        assert "only on GPUs" in message and "--multi_gpu" in message
    monkeypatch.setenv(variable, "false")
    assert make_accelerator(config).distributed_type.name == "NO"  # one process, no engine asked: it runs


def test_fsdp2_two_cpu_processes_match_one_and_resume_exactly_from_shards(tmp_path):
    """torch's FSDP 2 (what accelerate's fsdp_version 2 applies on GPUs) on 2 CPU processes: the loss of every global
    batch within 1e-5 of 1 process; the state saved shard by shard resumes a differently initialised copy to the
    same weights bit for bit; the shards merge into one file equal to the weights at the save."""
    import json
    import signal
    import subprocess
    import sys

    from fsdp_run import SAVE_AT, STEPS, make_unet, optimizer_of, train

    script = Path(__file__).with_name("fsdp_run.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
    try:
        output, _ = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the workers too, not only the launcher
        raise
    assert launcher.returncode == 0, output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard file per process
    unet = make_unet(seed=0)
    one = train(unet, optimizer_of(unet), range(STEPS), slice(None), lambda loss: loss.item())
    assert result["losses"] == pytest.approx(one, abs=1e-5) and one[-1] != one[0]
    assert result["resumed"] == result["losses"][SAVE_AT:]  # exactly: same shards, same arithmetic
    assert result["resumed_weights_equal"] and result["merged_equals_saved"] and result["moved"] > 0
