import pytest
import torch

from tunelab.evaluate.text_kv_cache import TextKeyValueCache, text_kv_cache


@pytest.mark.parametrize("model", ["tiny_sdxl_model", "tiny_sd15_model"])
@torch.no_grad()
def test_cached_text_keys_values_give_the_same_unet_output(model, request):
    m = request.getfixturevalue(model)
    unet = m.unet
    torch.manual_seed(0)
    width = unet.config.cross_attention_dim
    texts = torch.randn(3, 77, width)
    text = texts[torch.tensor([0, 0, 1, 2, 1, 0])]  # 6 rows, 3 distinct texts (as in a CFG grid batch)
    latents = torch.randn(6, 4, 8, 8)
    extra = {}
    if m.is_sdxl:
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(6, 64), "time_ids": torch.randn(6, 6)}
    plain = [unet(latents, t, text, **extra).sample for t in (900, 500)]
    originals = unet.attn_processors
    with text_kv_cache(unet):
        assert sum(isinstance(p, TextKeyValueCache) for p in unet.attn_processors.values()) > 0
        cached = [unet(latents, t, text, **extra).sample for t in (900, 500)]  # 2nd step reuses keys/values
        other_text = unet(latents, 500, text.flip(0), **extra).sample  # a new tensor: recomputed, not reused
    assert unet.attn_processors == originals  # restored: training code sharing the UNet never sees the cache
    for a, b in zip(plain, cached):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(other_text, unet(latents, 500, text.flip(0), **extra).sample, atol=1e-5)
