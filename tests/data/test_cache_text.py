"""Text-embedding cache: refused (with the reason) when it would be wrong; otherwise the loader's cached
prompt_embeds / pooled_prompt_embeds equal encode_prompts on the batch's captions (mixed 1–3 chunk prompts, "")."""

import pytest
import torch
from tiny_dataset import make_dataset

from tunelab.data.cache import TextSettings, build_text_cache, text_cache_refusal_reason
from tunelab.data.caption_config import CaptionConfig
from tunelab.data.index import DatasetIndex
from tunelab.data.loader import open_batches
from tunelab.errors import TunelabError
from tunelab.models.text_conditioning import encode_prompts


def test_refusal_reasons():
    assert text_cache_refusal_reason(CaptionConfig(quality_position="back"), "off") is None
    assert "text_encoder.mode" in text_cache_refusal_reason(CaptionConfig(), "on")
    assert "trained" in text_cache_refusal_reason(CaptionConfig(), "only")
    for options, word in [({"shuffle_caption": True}, "shuffle_caption"), ({"caption_dropout_rate": 0.1}, "caption_dropout_rate"),
                          ({"caption_tag_dropout_rate": 0.1}, "tag_dropout"), ({"enable_wildcard": True}, "wildcard")]:  # fmt: skip
        assert word in text_cache_refusal_reason(CaptionConfig(**options), "off")
    # a subset (sd-scripts dataset TOML) that shuffles makes the cache wrong too
    subset = CaptionConfig().for_subset({"shuffle_caption": True})[0]
    assert "shuffle_caption" in text_cache_refusal_reason(CaptionConfig(), "off", [subset])


def test_build_refuses_random_captions(tmp_path, tiny_sdxl_model):
    config = make_dataset(tmp_path, 3, captions={"caption_dropout_rate": 0.1})
    with DatasetIndex(config.index) as index, pytest.raises(TunelabError, match="refused: .*caption_dropout_rate"):
        build_text_cache(index, tiny_sdxl_model, config.captions, config.cache, text_encoder_mode="off")


def _tags(i: int) -> str:
    if i == 4:
        return ""  # no text → "" prompt → zero embedding (empty_as_zeros)
    many = 1 + (i % 3) * 14  # 1, 15 or 29 tags: 1, 2 or 3 chunks
    return ", ".join(f"masterpiece_{i}_tag_{k}" for k in range(many))


def test_cached_embeddings_equal_live_encoding(tmp_path, tiny_sdxl_model):
    config = make_dataset(tmp_path, 12, tags_of=_tags, captions={"quality_position": "front"},
                          cache={"text_embeddings": True, "shard_items": 4, "batch_size": 3})  # fmt: skip
    settings = TextSettings(clip_skip=None, max_chunks=3, empty_as_zeros=True)
    with DatasetIndex(config.index) as index:
        stats = build_text_cache(index, tiny_sdxl_model, config.captions, config.cache, text_encoder_mode="off",
                                 settings=settings, progress=False)  # fmt: skip
        assert (stats.computed, stats.shards_written) == (12, 3)
        again = build_text_cache(index, tiny_sdxl_model, config.captions, config.cache, text_encoder_mode="off",
                                 settings=settings, progress=False)  # fmt: skip
        assert (again.computed, again.reused) == (12 - 12, 12)
    with pytest.raises(TunelabError, match="refused: text encoders are trained"):
        open_batches(config, batch_size=2, text_encoder_mode="on")
    source = open_batches(config, batch_size=2, seed=0)
    assert source.has_text_embeddings
    chunk_counts, saw_empty = set(), False
    for batch in source.epoch_batches(0):
        with torch.no_grad():
            live = encode_prompts(tiny_sdxl_model, batch["captions"], max_chunks=3, empty_as_zeros=True)
        assert batch["prompt_embeds"].shape == live.prompt_embeds.shape
        torch.testing.assert_close(batch["prompt_embeds"], live.prompt_embeds, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["pooled_prompt_embeds"], live.pooled_prompt_embeds, rtol=1e-5, atol=1e-5)
        chunk_counts.add(live.prompt_embeds.shape[1] // 77)
        saw_empty |= "" in batch["captions"]
    source.close()
    assert chunk_counts >= {2, 3} and saw_empty  # the comparison covered padding and the zero embedding
    open_batches(config, batch_size=2, components=tiny_sdxl_model, text_settings=settings).close()
    with pytest.raises(TunelabError, match="other settings .*clip_skip"):
        open_batches(config, batch_size=2, components=tiny_sdxl_model, text_settings=TextSettings(clip_skip=3))
