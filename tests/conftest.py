import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tests run 2 in parallel on 2 cores
if torch.cuda.is_available():  # tests compare trainings bit for bit (resume = straight through): CUDA needs
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic kernels for that (set before cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)  # starts; a kernel without one warns with its name).
    torch.backends.cudnn.benchmark = False  # Unchecked so far: the machines these tests ran on have no GPU.


@pytest.fixture(scope="session")
def tiny_sdxl_model():
    from tunelab.models.tiny import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture(scope="session")
def tiny_sd15_model():
    from tunelab.models.tiny import tiny_sd15

    return tiny_sd15()
