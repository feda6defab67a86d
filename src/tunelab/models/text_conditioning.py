"""Prompts → text-encoder conditioning for SD1.5 and SDXL, with long prompts and A1111 emphasis weights.

Long prompts: the tokens are split into 75-token chunks; each chunk is wrapped as BOS + tokens + EOS and padded to
77 with the tokenizer's own pad token (CLIP-L: EOS; SDXL's second tokenizer: "!" = id 0). A one-chunk prompt is
exactly HF's `padding="max_length", max_length=77, truncation=True`. Each chunk is encoded separately and the
results are concatenated along the sequence axis (77·n tokens), as A1111 and sd-scripts do.

Weights (A1111 emphasis): token embeddings are multiplied by their weight, then rescaled so the chunk's mean is what
it was before. A1111 takes that mean over the whole batch; we take it per prompt so an image does not depend on
which other prompts share its batch.

`clip_skip` follows A1111: 1 = last layer (SD1.5 default), 2 = penultimate. SDXL always uses at least the penultimate
layer of both encoders, without the final layer norm; its pooled embedding is the second encoder's projection of
the first chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch

from tunelab.models.components import ModelComponents

CHUNK_TOKENS = 75  # text tokens per chunk; + BOS + EOS = 77
BREAK = float("-inf")  # weight of the ("BREAK", BREAK) segment: close the current chunk

Segments = list[tuple[str, float]]
Prompt = Union[str, Segments]


@dataclass
class PromptEmbeddings:
    prompt_embeds: torch.Tensor  # [B, 77·chunks, D]  (SDXL: D = width(TE1) + width(TE2))
    pooled_prompt_embeds: torch.Tensor | None  # [B, D2] for SDXL, None for SD1.5


def is_break(weight: float) -> bool:
    return math.isinf(weight) and weight < 0


def as_segments(prompt: Prompt) -> Segments:
    return [(prompt, 1.0)] if isinstance(prompt, str) else list(prompt)


def split_into_chunks(tokenizer, segments: Segments) -> list[tuple[list[int], list[float]]]:
    """Text segments → chunks of ≤75 (token id, weight) pairs, without BOS/EOS. At least one (maybe empty) chunk."""
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in segments:
        if is_break(weight):
            chunks.append((ids, weights))
            ids, weights = [], []
            continue
        if not text:
            continue
        for token in tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids:
            if len(ids) == CHUNK_TOKENS:
                chunks.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(float(weight))
    if ids or not chunks:
        chunks.append((ids, weights))
    return chunks


def wrap_chunk(tokenizer, ids: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
    """BOS + ids + EOS, padded to 77 with the tokenizer's pad id; special tokens get weight 1."""
    length = CHUNK_TOKENS + 2
    full = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    full += [tokenizer.pad_token_id] * (length - len(full))
    full_weights = [1.0, *weights, 1.0] + [1.0] * (length - len(weights) - 2)
    return full, full_weights


def chunk_token_ids(tokenizer, text: Prompt, max_chunks: int = 3) -> list[list[int]]:
    """Token ids of each 77-token chunk of a prompt (at most `max_chunks`; the rest is cut, as other tools do)."""
    return [wrap_chunk(tokenizer, ids, w)[0] for ids, w in split_into_chunks(tokenizer, as_segments(text))[:max_chunks]]


def tokenize_batch(tokenizer, prompts: Sequence[Prompt], max_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """→ ids [B, n, 77] (long) and weights [B, n, 77]; shorter prompts padded with empty chunks to n."""
    per_prompt = [split_into_chunks(tokenizer, as_segments(p))[:max_chunks] for p in prompts]
    n = max(len(chunks) for chunks in per_prompt)
    ids, weights = [], []
    for chunks in per_prompt:
        chunks = chunks + [([], [])] * (n - len(chunks))
        wrapped = [wrap_chunk(tokenizer, c_ids, c_w) for c_ids, c_w in chunks]
        ids.append([w[0] for w in wrapped])
        weights.append([w[1] for w in wrapped])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(weights, dtype=torch.float32)


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 emphasis on [B, n, 77, D] hidden states: scale by weights, then restore each prompt-chunk's mean."""
    if bool((weights == 1).all()):
        return hidden
    original_mean = hidden.mean(dim=(2, 3), keepdim=True)
    weighted = hidden * weights.to(hidden.dtype)[..., None]
    new_mean = weighted.mean(dim=(2, 3), keepdim=True)
    # A mean near zero (e.g. an untrained final LayerNorm) makes the ratio noise / noise: leave those unscaled.
    floor = 1e-3 * hidden.abs().mean(dim=(2, 3), keepdim=True)
    usable = (original_mean.abs() > floor) & (new_mean.abs() > floor)
    return torch.where(usable, weighted * (original_mean / new_mean), weighted)


def _encoder_hidden(encoder, ids: torch.Tensor, layer: int, final_norm: bool):
    """Hidden states of `layer` (negative index into hidden_states) and the encoder's output (for pooled)."""
    out = encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[layer]
    if final_norm:
        hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)  # transformers 5 flattened CLIPTextModel
    return hidden, out


def encode_prompts(
    components: ModelComponents,
    prompts: Sequence[Prompt],
    *,
    clip_skip: int | None = None,
    max_chunks: int = 3,
    empty_as_zeros: bool = False,
) -> PromptEmbeddings:
    """Encode a batch of prompts. Gradients flow into the text encoders unless the caller disables them.

    `empty_as_zeros`: prompts that are "" get all-zero embeddings (SDXL's `force_zeros_for_empty_prompt`, and the
    "dropped caption" of training recipes that drop to the zero embedding)."""
    batch = len(prompts)
    device = next(components.unet.parameters()).device  # diffusers' `.device` walks every module: ms per call
    hidden_per_encoder = []
    pooled = None
    for index, (encoder, tokenizer) in enumerate(zip(components.text_encoders, components.tokenizers)):
        ids, weights = tokenize_batch(tokenizer, prompts, max_chunks)
        n = ids.shape[1]
        flat_ids = ids.view(batch * n, -1).to(next(encoder.parameters()).device)
        if components.is_sdxl:
            hidden, out = _encoder_hidden(encoder, flat_ids, -max(clip_skip or 2, 2), final_norm=False)
        else:
            hidden, out = _encoder_hidden(encoder, flat_ids, -(clip_skip or 1), final_norm=True)
        hidden = hidden.view(batch, n, ids.shape[2], -1)
        hidden = apply_emphasis(hidden, weights.to(hidden.device))
        hidden_per_encoder.append(hidden.reshape(batch, n * ids.shape[2], -1))
        if components.is_sdxl and index == 1:
            pooled = out.text_embeds.view(batch, n, -1)[:, 0]
    prompt_embeds = torch.cat(hidden_per_encoder, dim=-1).to(device)
    if pooled is not None:
        pooled = pooled.to(device)
    if empty_as_zeros:
        keep = torch.tensor([not (isinstance(p, str) and p == "") for p in prompts], device=device)
        prompt_embeds = prompt_embeds * keep[:, None, None].to(prompt_embeds.dtype)
        if pooled is not None:
            pooled = pooled * keep[:, None].to(pooled.dtype)
    return PromptEmbeddings(prompt_embeds, pooled)


def sdxl_time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size: torch.Tensor) -> torch.Tensor:
    """SDXL micro-conditioning: [B, 6] = (orig h, orig w, crop top, crop left, target h, target w)."""
    return torch.cat([original_size, crop_top_left, target_size], dim=1).float()
