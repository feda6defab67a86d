import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tests run 2 in parallel on 2 cores


@pytest.fixture(scope="session")
def tiny_sdxl_model():
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture(scope="session")
def tiny_sd15_model():
    from tunelab.models.tiny import tiny_sd15

    return tiny_sd15()
