"""A dataset too small for one batch (every image skipped, or fewer than train.batch_size per bucket) is a one-line
TunelabError naming the way out, not a ValueError traceback from inside the training loop."""

import pytest

from tunelab.data.config import DataConfig
from tunelab.data.loader import open_batches
from tunelab.data.prepare import prepare_dataset
from tunelab.errors import TunelabError
from tunelab.toy.world import write_dataset
from tunelab.train.batches import DataPosition, micro_batches


def test_fewer_items_than_a_batch_is_a_clear_error(tmp_path):
    write_dataset(tmp_path / "images", "finetune", count=3, progress=False)
    config = DataConfig.model_validate({
        "index": "index.sqlite", "sources": [{"type": "folder", "path": "images"}],
        "buckets": {"resolution": 32, "step": 8, "min_side": 16, "max_side": 64},
    }).resolved(tmp_path)
    prepare_dataset(config, progress=False)
    source = open_batches(config, batch_size=4, seed=0, rank=0, world_size=1, text_encoder_mode="on")
    with pytest.raises(TunelabError, match=r"^the training data gives no complete batch \(3 items in 1 buckets.*\): "
                                           r"lower train.batch_size, or add images"):
        next(micro_batches(source, DataPosition()))
