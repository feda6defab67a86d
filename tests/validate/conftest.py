import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules import validation_helpers


@pytest.fixture
def small_model():
    """A fresh small tiny-SDXL (tests may train or change it)."""
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl(block_out_channels=(16, 32, 32), layers_per_block=1, te_layers=2)
