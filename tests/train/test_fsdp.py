"""Beyond one node: the shipped accelerate configs are configs accelerate reads (every key an option it knows, the
machine and process counts they say), and a launch that asks for FSDP / DeepSpeed is refused with its reason before
any step: on CPU accelerate would silently train unsharded copies; on GPUs tunelab has no sharded checkpoints yet.
(FSDP itself cannot run here: accelerate selects it only with GPUs; see docs/MULTI_NODE.md for the GPU check.)"""

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
