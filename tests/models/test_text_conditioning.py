import torch

from tunelab.models.text_conditioning import (
    BREAK,
    apply_emphasis,
    chunk_token_ids,
    encode_prompts,
    sdxl_time_ids,
)
from tunelab.models.tokenizers import clip_tokenizer

BOS, EOS = 49406, 49407


def test_one_chunk_equals_hf_max_length_padding():
    for pad in ("<|endoftext|>", "!"):
        tok = clip_tokenizer(pad_token=pad)
        text = "masterpiece, 1girl, astolfo_\\(fate\\), red hair"
        expected = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert chunk_token_ids(tok, text) == [expected]


def test_long_prompt_is_split_into_75_token_chunks_each_wrapped():
    tok = clip_tokenizer(pad_token="!")
    text = ", ".join(f"tag{i}" for i in range(60))  # well over 75 tokens
    plain = tok(text, add_special_tokens=False).input_ids
    chunks = chunk_token_ids(tok, text, max_chunks=5)
    assert len(chunks) == -(-len(plain) // 75)
    for k, chunk in enumerate(chunks):
        body = plain[75 * k : 75 * (k + 1)]
        assert len(chunk) == 77
        assert chunk[: len(body) + 2] == [BOS, *body, EOS]
        assert all(t == 0 for t in chunk[len(body) + 2 :])  # SDXL's 2nd tokenizer pads with "!" (0)
    assert len(chunk_token_ids(tok, text, max_chunks=2)) == 2


def test_break_starts_a_new_chunk():
    tok = clip_tokenizer()
    chunks = chunk_token_ids(tok, [("red circle", 1.0), ("BREAK", BREAK), ("blue square", 1.0)])
    assert len(chunks) == 2
    assert chunks[1][:4] == [BOS, *tok("blue square", add_special_tokens=False).input_ids, EOS]


def test_emphasis_on_a_hand_made_embedding_matches_a1111_by_hand():
    """A1111 (modules/sd_hijack_clip.py): z *= weight of each token, then z *= original mean / new mean. Worked by hand
    on a chunk whose 77 tokens are all 1.0 and one token weighted 2 ("(red:2)"): the mean goes from 1 to 78/77, so
    every token is scaled by 77/78 — the weighted one ends at 2·77/78, the others at 77/78. Unlike A1111 (one mean
    over the whole batch) the mean is kept per prompt: a second prompt with no weights is returned unchanged."""
    hidden = torch.ones(2, 1, 77, 4)
    hidden[1] = 3.0  # another prompt in the batch, without weights
    weights = torch.ones(2, 1, 77)
    weights[0, 0, 5] = 2.0
    expected = torch.full((2, 1, 77, 4), 77 / 78)
    expected[0, 0, 5] = 2 * 77 / 78
    expected[1] = 3.0
    torch.testing.assert_close(apply_emphasis(hidden, weights), expected, rtol=1e-5, atol=0)
    # a down-weighted token ("(red:0.5)") and a second chunk: each chunk keeps its own mean, worked the same way
    hidden = torch.tensor([2.0, 4.0]).repeat_interleave(77).reshape(1, 2, 77, 1).expand(1, 2, 77, 3).clone()
    weights = torch.ones(1, 2, 77)
    weights[0, 1, 0] = 0.5  # chunk 2: mean 4 → (76·4 + 2)/77 = 306/77, so every token × 308/306
    expected = hidden.clone()
    expected[0, 1] = 4 * 308 / 306
    expected[0, 1, 0] = 2 * 308 / 306
    torch.testing.assert_close(apply_emphasis(hidden, weights), expected, rtol=1e-5, atol=0)


def test_emphasis_leaves_near_zero_mean_chunks_unscaled():
    hidden = torch.randn(1, 1, 77, 8)
    hidden = hidden - hidden.mean()  # mean ~1e-9: the restore ratio would be noise
    weights = torch.ones(1, 1, 77)
    weights[0, 0, 5] = 2.0
    out = apply_emphasis(hidden, weights)
    assert torch.allclose(out[0, 0, 5], 2 * hidden[0, 0, 5]) and torch.allclose(out[0, 0, 6], hidden[0, 0, 6])


@torch.no_grad()
def test_encode_sdxl_shapes_and_pooled_from_first_chunk(tiny_sdxl_model):
    m = tiny_sdxl_model
    long_prompt = ", ".join(f"tag{i}" for i in range(60))
    emb = encode_prompts(m, ["red circle", long_prompt])
    width = sum(te.config.hidden_size for te in m.text_encoders)
    n = len(chunk_token_ids(m.tokenizers[0], long_prompt))
    assert emb.prompt_embeds.shape == (2, 77 * n, width)
    assert emb.pooled_prompt_embeds.shape == (2, m.text_encoders[1].config.projection_dim)
    alone = encode_prompts(m, ["red circle"])
    # a short prompt in a batch with a long one: first chunk identical, pooled identical
    assert torch.allclose(emb.prompt_embeds[0, :77], alone.prompt_embeds[0], atol=1e-6)
    assert torch.allclose(emb.pooled_prompt_embeds[0], alone.pooled_prompt_embeds[0], atol=1e-6)


@torch.no_grad()
def test_encode_sdxl_matches_diffusers_pipeline(tiny_sdxl_model):
    m = tiny_sdxl_model
    pipe = m.pipeline()
    ref, _, ref_pooled, _ = pipe.encode_prompt("blue square, forest", do_classifier_free_guidance=False)
    emb = encode_prompts(m, ["blue square, forest"])
    assert torch.allclose(emb.prompt_embeds, ref, atol=1e-5)
    assert torch.allclose(emb.pooled_prompt_embeds, ref_pooled, atol=1e-5)


@torch.no_grad()
def test_encode_sd15_matches_diffusers_and_clip_skip(tiny_sd15_model):
    m = tiny_sd15_model
    pipe = m.pipeline()
    ref, _ = pipe.encode_prompt("blue square", "cpu", 1, False)
    assert torch.allclose(encode_prompts(m, ["blue square"]).prompt_embeds, ref, atol=1e-5)
    te = m.text_encoders[0]
    ids = m.tokenizers[0]("blue square", padding="max_length", max_length=77, return_tensors="pt").input_ids
    ref_skip = te.final_layer_norm(te(ids, output_hidden_states=True).hidden_states[-2])  # A1111 clip skip 2
    assert torch.allclose(encode_prompts(m, ["blue square"], clip_skip=2).prompt_embeds, ref_skip, atol=1e-5)


@torch.no_grad()
def test_empty_as_zeros_and_weight_zero(tiny_sdxl_model):
    emb = encode_prompts(tiny_sdxl_model, ["", "red"], empty_as_zeros=True)
    assert emb.prompt_embeds[0].abs().sum() == 0 and emb.pooled_prompt_embeds[0].abs().sum() == 0
    assert emb.prompt_embeds[1].abs().sum() > 0
    weighted = encode_prompts(tiny_sdxl_model, [[("red", 1.0), ("circle", 0.0)]])
    plain = encode_prompts(tiny_sdxl_model, ["red circle"])
    assert weighted.prompt_embeds.shape == plain.prompt_embeds.shape
    assert not torch.allclose(weighted.prompt_embeds, plain.prompt_embeds)


def test_sdxl_time_ids():
    ids = sdxl_time_ids(torch.tensor([[32, 48]]), torch.tensor([[0, 8]]), torch.tensor([[32, 32]]))
    assert ids.tolist() == [[32.0, 48.0, 0.0, 8.0, 32.0, 32.0]]
