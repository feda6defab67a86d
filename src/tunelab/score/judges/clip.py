"""The CLIP judge: zero-shot, as in the CLIP paper. An image shows a concept when the concept's `text` beats the
neutral `alternatives` the probes file names: per image a softmax over [text, *alternatives] of
`logit_scale * cosine(image, text)`; it passes when the text's probability is strictly the highest (a tie is not a
win), and its score is that probability. `clip_score` reports the papers' CLIP score, 100 × cosine.

The model is a transformers `CLIPModel` folder as published (config.json, model.safetensors, tokenizer files,
preprocessor_config.json), read offline. Images go through the folder's own preprocessing on the PIL path: the
torchvision-backed processors are never imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tunelab.errors import TunelabError, fail
from tunelab.score.judges.base import Expectation, Judge, Judged, file_digest

# Any one of these sets of files is a tokenizer transformers can read (hub CLIP folders ship both).
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _image_processor_class():
    try:  # transformers 5: the PIL implementation under its own name (plain CLIPImageProcessor wants torchvision)
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL / numpy one
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _projected(output) -> torch.Tensor:
    """`get_*_features` returns the projected tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def check_clip_folder(folder: Path) -> None:
    """Every file the judge reads is there, and config.json is a full CLIP (text + vision) model's, before any
    sampling starts. Raises TunelabError naming the first missing file."""
    if not folder.exists():
        raise fail(folder, "no such folder (the CLIP judge needs a transformers CLIPModel folder)")
    if not folder.is_dir():
        raise fail(folder, "not a folder (the CLIP judge needs a transformers CLIPModel folder)")
    if not (folder / "config.json").is_file():
        raise fail(folder, "CLIP folder has no config.json")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise fail(folder / "config.json", f"unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if model_type != "clip":
        raise fail(folder / "config.json", f"model_type is {model_type!r}, not 'clip' (a CLIPModel with text and "
                                           "vision towers)")
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        pickled = [name for name in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (folder / name).is_file()]
        why = f" ({pickled[0]} is a pickle, which can run code when loaded; convert it to .safetensors)" \
            if pickled else ""
        raise fail(folder, f"CLIP folder has no model.safetensors{why}")
    if not any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        missing = [n for n in TOKENIZER_FILE_SETS[1] if not (folder / n).is_file()]
        raise fail(folder, f"CLIP folder has no tokenizer: no tokenizer.json and no {' / '.join(missing)}")
    if not (folder / "preprocessor_config.json").is_file():
        raise fail(folder, "CLIP folder has no preprocessor_config.json (the image preprocessing settings)")


class ClipJudge(Judge):
    name = "clip"

    def __init__(self, folder: str | Path, device: str | torch.device | None = None, batch_size: int = 32):
        from transformers import CLIPModel, CLIPTokenizer

        from tunelab.models.io import quiet_libraries

        folder = Path(folder)
        check_clip_folder(folder)
        self.folder = folder
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        try:
            with quiet_libraries():
                model, info = CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                        output_loading_info=True)
                self.tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
                self.image_processor = _image_processor_class().from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise fail(folder, f"cannot load CLIP model ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        # A weight the file lacks would be silently random: refuse rather than judge with noise.
        missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
        if missing:
            raise fail(folder, f"model.safetensors lacks {len(missing)} of the weights config.json implies "
                               f"(first: {missing[0]})")
        if any(p.is_meta for p in model.parameters()):
            raise fail(folder, "CLIP model left weights unloaded (meta device)")
        # float32 whatever the file stores (fp16 folders are common; half precision on CPU is slow or unsupported)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        # Texts longer than this are truncated by the tokenizer: check() refuses them instead.
        self.max_tokens = min(self.tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self._token_cache: dict[str, tuple[int, ...]] = {}
        self._text_embeddings: dict[tuple[int, ...], np.ndarray] = {}

    # ---- the interface ---------------------------------------------------------------------------------------

    def identity(self) -> str:
        if not hasattr(self, "_identity"):  # hashed once per judge
            self._identity = f"clip {file_digest(*sorted(self.folder.glob('*.safetensors')))}"
        return self._identity

    def check(self, expectation: Expectation) -> str | None:
        text = expectation.text
        if text is None or not text.strip():
            return "the CLIP judge needs a `text` (what the image must show)"
        if not expectation.alternatives:
            return "the CLIP judge needs neutral `alternatives` for the text to beat (zero-shot)"
        for candidate in (text, *expectation.alternatives):
            n = len(self._token_ids(candidate))
            if n > self.max_tokens:
                shown = candidate if len(candidate) <= 40 else candidate[:40] + "…"
                return f"{shown!r} is {n} CLIP tokens; CLIP reads at most {self.max_tokens} (start and end included)"
        text_ids = self._token_ids(text)
        for alternative in expectation.alternatives:
            if self._token_ids(alternative) == text_ids:  # same tokens → same embedding: the text could never win
                return f"alternative {alternative!r} reads the same as the text {text!r} to CLIP"
        if len({self._token_ids(a) for a in expectation.alternatives}) < len(expectation.alternatives):
            return "two alternatives read the same to CLIP (a duplicate weighs twice in the softmax)"
        return None

    @torch.no_grad()
    def read(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, float32 [N, projection_dim]."""
        chunks = [np.zeros((0, self.model.config.projection_dim), dtype=np.float32)]
        with tqdm(total=len(images), desc="CLIP", unit="img", leave=False,
                  disable=len(images) <= self.batch_size) as bar:
            for start in range(0, len(images), self.batch_size):
                batch = [image.convert("RGB") for image in images[start:start + self.batch_size]]
                pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
                features = _projected(self.model.get_image_features(pixel_values=pixels.to(self.device)))
                chunks.append(_normalised(features))
                bar.update(len(batch))
        return np.concatenate(chunks)

    def verdict(self, readings: np.ndarray, expectation: Expectation) -> Judged:
        if expectation.text is None or not expectation.alternatives:
            raise TunelabError(f"CLIP judge: {self.check(expectation)}")
        texts = [expectation.text, *expectation.alternatives]
        probabilities = self.probabilities(readings, texts)
        text_p, best_alternative_p = probabilities[:, 0], probabilities[:, 1:].max(axis=1)
        return Judged(text_p > best_alternative_p, text_p)

    # ---- reporting -------------------------------------------------------------------------------------------

    def probabilities(self, readings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Per image, the softmax over `texts` of logit_scale × cosine: float64 [N, len(texts)]."""
        logits = self.logit_scale * (np.asarray(readings, dtype=np.float64) @ self.text_embeddings(texts).T)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def clip_score(self, readings: np.ndarray, text: str) -> np.ndarray:
        """The papers' CLIP score per image: 100 × cosine(image, text) (not clamped at 0), float64 [N]."""
        return 100.0 * (np.asarray(readings, dtype=np.float64) @ self.text_embeddings([text])[0])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, float64 [len(texts), projection_dim]; cached per token sequence, so texts
        CLIP reads the same (case, spacing) get bit-identical embeddings whenever they are asked for (exact ties)."""
        # Past CLIP's length (check() refuses such texts) keep the start and the end token, as truncation would.
        m = self.max_tokens
        ids = [i if len(i) <= m else i[:m - 1] + i[-1:] for i in map(self._token_ids, texts)]
        new = list(dict.fromkeys(i for i in ids if i not in self._text_embeddings))
        if new:
            inputs = self.tokenizer.pad({"input_ids": [list(i) for i in new]}, return_tensors="pt").to(self.device)
            embedded = _normalised(_projected(self.model.get_text_features(**inputs)))
            self._text_embeddings.update(zip(new, embedded))
        return np.stack([self._text_embeddings[i] for i in ids]).astype(np.float64)

    def _token_ids(self, text: str) -> tuple[int, ...]:
        if text not in self._token_cache:
            self._token_cache[text] = tuple(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])
        return self._token_cache[text]


def _normalised(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()
