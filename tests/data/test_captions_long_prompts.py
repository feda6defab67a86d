"""Processed captions longer than 77 tokens → 75-token chunks, each BOS + tokens + EOS + pad, on the real CLIP
tokenizer, for both SDXL tokenizers (CLIP-L pads with <|endoftext|>, the second one with "!" = id 0)."""

import math
import random

import pytest

from tunelab.data.caption_config import CaptionConfig
from tunelab.data.captions import CaptionPolicy
from tunelab.models.text_conditioning import chunk_token_ids
from tunelab.models.tokenizers import clip_tokenizer

BOS, EOS = 49406, 49407
TOKENIZERS = {"clip_l": (clip_tokenizer(), EOS), "sdxl_second": (clip_tokenizer(pad_token="!"), 0)}


def long_prompt(n_tags: int) -> str:
    tags = ", ".join(f"very_long_tag_number_{i} \\(series\\)" for i in range(n_tags))
    policy = CaptionPolicy(CaptionConfig(quality_position="front"))
    return policy(type("Item", (), {"tags": "masterpiece, " + tags, "caption": None, "tag_categories": None}), random.Random(0))


@pytest.mark.parametrize("name", TOKENIZERS)
def test_long_caption_is_75_token_chunks_in_bos_eos(name):
    tokenizer, pad = TOKENIZERS[name]
    assert tokenizer.pad_token_id == pad and tokenizer.convert_ids_to_tokens(0) == "!"
    text = long_prompt(20)
    assert text.startswith("masterpiece, very long tag number 0 (series)")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert 150 < len(ids) <= 225  # needs all three chunks
    chunks = chunk_token_ids(tokenizer, text, max_chunks=3)
    assert len(chunks) == math.ceil(len(ids) / 75) == 3
    for k, chunk in enumerate(chunks):
        body = ids[75 * k : 75 * (k + 1)]
        assert len(chunk) == 77
        assert chunk[0] == BOS and chunk[1 : 1 + len(body)] == body and chunk[1 + len(body)] == EOS
        assert chunk[2 + len(body) :] == [pad] * (75 - len(body))
    # one chunk is exactly HF's own max_length / truncation encoding (the 77-token scheme)
    hf = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert chunk_token_ids(tokenizer, text, max_chunks=1) == [hf]
    short = "masterpiece, 1girl, solo"
    assert chunk_token_ids(tokenizer, short) == [tokenizer(short, padding="max_length", max_length=77).input_ids]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_over_long_caption_is_cut_at_max_chunks(name):
    tokenizer, _ = TOKENIZERS[name]
    text = long_prompt(30)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > 225
    chunks = chunk_token_ids(tokenizer, text, max_chunks=3)
    assert len(chunks) == 3 and [t for c in chunks for t in c[1:76]] == ids[:225]
