import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def run_config(tmp_path, **validation):
    """A run config whose [model] path does not exist (the model is built in memory) with a [validation] table."""
    from tunelab.train.config import RunConfig

    table = {"cache_dir": str(tmp_path / "cache"), "retention_steps": 3, **validation}
    return RunConfig.model_validate({"model": {"path": str(tmp_path / "no-model")}, "train": {"max_steps": 1},
                                     "validation": table})


@pytest.fixture
def small_model():
    """A fresh small tiny-SDXL (tests may train or change it)."""
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2)
