"""The run config shown in the README is a valid config (docs must not drift from the code)."""

import re
import tomllib
from pathlib import Path

from tunelab.config import parse_config
from tunelab.train.config import RunConfig


def test_readme_run_config_parses():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    config = parse_config(RunConfig, tomllib.loads(block), "README.md")
    assert config.text_encoder.mode == "on" and config.unet.preset == "sdxl-71"
    assert config.optimizer.type == "adamw8bit" and config.validation.retention_prompts
