import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import base_config, small_sdxl, tiny_items  # noqa: E402


@pytest.fixture
def train_tiny(tmp_path):
    """Train a fresh tiny SDXL with in-memory data; returns (components, weights before, run)."""
    from tunelab.train.batches import InMemoryBatches
    from tunelab.train.config import RunConfig
    from tunelab.train.recipe import run_training

    def run(items=None, **tables):
        config = RunConfig.model_validate(base_config(tmp_path / "run", **tables))
        components = small_sdxl()
        before = {name: {k: v.clone() for k, v in m.state_dict().items()}
                  for name, m in components.named_parts().items()}
        batches = InMemoryBatches(items or tiny_items(), batch_size=config.train.batch_size, seed=config.train.seed)
        return components, before, run_training(config, components=components, batches=batches)

    return run
