"""`tunelab captions CONFIG --preview N`: what the caption policy makes of the first N items of the index.

For each item: its raw tags and caption, the processed prompt of (seed, epoch), and its length in CLIP tokens and
75-token chunks (so a user sees which prompts are cut at `max_chunks`). The header says whether a text-embedding
cache would be allowed with these captions, and which subset options were not recognised."""

from __future__ import annotations

from tunelab.data.cache import text_cache_refusal_reason
from tunelab.data.captions import SubsetPolicies
from tunelab.data.config import DataConfig
from tunelab.data.index import DatasetIndex
from tunelab.models.text_conditioning import CHUNK_TOKENS


def preview_lines(data_config: DataConfig, count: int, *, seed: int = 0, epoch: int = 0, split: str | None = "train",
                  max_chunks: int = 3, text_encoder_mode: str = "off") -> list[str]:  # fmt: skip
    from tunelab.models.tokenizers import clip_tokenizer

    tokenizer = clip_tokenizer()
    lines = []
    with DatasetIndex.open_existing(data_config.index) as index:
        policies = SubsetPolicies.for_index(data_config.captions, index)
        subsets = index.subsets()
        if text_encoder_mode == "off":
            reason = text_cache_refusal_reason(data_config.captions, "off", policies.configs())
            lines.append(f"text-embedding cache (text encoders frozen): {'refused: ' + reason if reason else 'allowed'}")
        else:  # the cache is only ever a question for frozen encoders
            lines.append(f"text-embedding cache: not used (text encoders train: text_encoder.mode = {text_encoder_mode!r})")
        for subset_id, ignored in policies.ignored_options.items():
            lines.append(f"subset {subsets[subset_id].name}: options not used by the caption policy: {', '.join(ignored)}")
        shown = 0
        for item in index.iter_items(split=split):
            if shown == count:
                break
            shown += 1
            prompt = policies.prompt(item, seed=seed, epoch=epoch)
            tokens = len(tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids)
            chunks = max(1, -(-tokens // CHUNK_TOKENS))
            cut = f", cut to {max_chunks}" if chunks > max_chunks else ""
            lines += [
                "",
                f"[{item.id}] {item.path}  ({item.bucket_width}x{item.bucket_height}, {item.split})",
                f"  tags:    {_one_line(item.tags)}",
                f"  caption: {_one_line(item.caption)}",
                f"  prompt:  {prompt if prompt else '(empty: dropped)'}",
                f"  tokens:  {tokens} → {chunks} chunk{'s' if chunks > 1 else ''} of 75{cut}",
            ]
        if shown == 0:
            usable = index.count(split=split)
            lines.append(f"--preview 0: none shown of {usable} usable items in split {split!r}" if usable and not count
                         else f"no usable items in split {split!r}")
    return lines


def _one_line(text: str | None) -> str:
    return "(none)" if text is None else text.replace("\n", "\\n")  # a multi-line caption stays one line
