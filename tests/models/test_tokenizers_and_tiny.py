import subprocess
import sys

import torch

from tunelab.models.tiny import tiny_sd15, tiny_sdxl
from tunelab.models.tokenizers import clip_tokenizer


def test_clip_tokenizer_matches_reference_ids():
    # Reference ids of OpenAI CLIP for "a photo of a cat": BOS, a, photo, of, a, cat, EOS.
    tok = clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408


def test_sdxl_second_tokenizer_pads_with_exclamation_mark():
    ids = clip_tokenizer(pad_token="!")("a cat", padding="max_length", max_length=8).input_ids
    assert ids == [49406, 320, 2368, 49407, 0, 0, 0, 0]
    ids1 = clip_tokenizer()("a cat", padding="max_length", max_length=8).input_ids
    assert ids1 == [49406, 320, 2368, 49407, 49407, 49407, 49407, 49407]


def test_tiny_builders_are_deterministic_and_sdxl_shaped():
    a, b = tiny_sdxl(seed=3), tiny_sdxl(seed=3)
    for (ka, pa), (kb, pb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb)
    assert a.unet.config.addition_embed_type == "text_time"
    assert type(a.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
    assert a.unet.config.cross_attention_dim == sum(te.config.hidden_size for te in a.text_encoders)
    assert tiny_sd15().architecture == "sd15"


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "tunelab.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "tunelab 0.1.0"
