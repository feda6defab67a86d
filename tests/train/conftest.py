import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import small_sdxl, tiny_items  # noqa: E402


def base_config(output_dir, **tables) -> dict:
    """A tiny-run config: 3 steps of batch 4, high learning rates so every trained tensor moves."""
    config = {
        "model": {"path": "unused"},
        "train": {"output_dir": str(output_dir), "max_steps": 3, "batch_size": 4},
        "unet": {"learning_rate": 1e-3},
        "text_encoder": {"learning_rate": 1e-3},
        "checkpoint": {"every_n_epochs": 0},
        "logging": {"progress_bar": False, "tensorboard": False},
    }
    for table, values in tables.items():
        config.setdefault(table, {}).update(values)
    return config


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


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}
