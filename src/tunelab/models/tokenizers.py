"""The real CLIP BPE tokenizer, built offline from the vocabulary OpenAI/OpenCLIP ship (`bpe_simple_vocab_16e6.txt.gz`).

SD1.5's tokenizer and both SDXL tokenizers use this same vocabulary (49,408 tokens). They differ only in padding:
CLIP-L pads with `<|endoftext|>`; SDXL's second (OpenCLIP bigG) tokenizer pads with `!` (id 0)."""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte→printable-unicode table (the BPE works on these characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Derive HF-style `vocab` and `merges` from the BPE file, exactly as CLIP's simple_tokenizer does."""
    raw = resources.files("tunelab.models").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A real CLIP tokenizer. `pad_token="!"` gives SDXL's second tokenizer."""
    vocab, merges = clip_vocab_and_merges()
    tok = CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], pad_token=pad_token)
    tok.model_max_length = MODEL_MAX_LENGTH
    return tok


def write_tokenizer_files(folder: str | Path, pad_token: str = EOS) -> Path:
    """Write vocab.json / merges.txt / configs so `CLIPTokenizer.from_pretrained(folder)` works offline."""
    from tunelab import atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    atomic.write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic.write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    atomic.write_json(folder / "special_tokens_map.json", special)
    atomic.write_json(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, "do_lower_case": True, **special},
    )
    return folder
