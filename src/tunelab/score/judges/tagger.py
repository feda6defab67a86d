"""The WD tagger judge: booru-tag classifiers in the layout their authors publish and the field's tagging tools read.

A tagger folder holds `model.onnx` and `selected_tags.csv` (`tag_id,name,category,count`; category 0 general,
4 character, 9 rating). The model is run with onnxruntime (CUDA first where onnxruntime has it, else CPU).

Preprocessing is the authors' own (the v3 models' reference app): transparent pixels composited on white, the image
padded to a white square (centred), resized (bicubic) to the model's input size read from its input shape (NHWC,
448 for the published v3 models; the batch axis may be fixed or dynamic), float32 0–255 in **BGR** order.

Outputs: the published models already end in a sigmoid. A model that returns logits instead is detected (any output
outside [0, 1]) and the sigmoid applied here, so both kinds read as probabilities.

Verdict: an image passes when every expected tag is above its threshold and no absent tag is; thresholds are per
category (0.35 general, 0.85 character, the common tools' defaults; other categories use the general one) unless a
per-tag threshold is given. Score = min(expected tags' probabilities, 1 − absent tags' probabilities).

Tag names match whichever way they are written: `_` or space, escaped `\\(` `\\)` or plain parentheses, any case
(`long_hair` = `long hair`, `astolfo_\\(fate\\)` = `astolfo (fate)`)."""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from tunelab.errors import TunelabError, fail
from tunelab.score.judges.base import Expectation, Judge, Judged, file_digest

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
TAG_COLUMNS = ("tag_id", "name", "category", "count")
GENERAL, CHARACTER, RATING = 0, 4, 9
DEFAULT_GENERAL_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
WHITE = (255, 255, 255)


def tag_key(name: str) -> str:
    """The form two spellings of one tag share: lower case, spaces for `_`, plain parentheses."""
    return " ".join(name.replace("\\(", "(").replace("\\)", ")").replace("_", " ").lower().split())


@dataclass
class TagReadings:
    """What the tagger saw: `probabilities[i, t]` is image i's probability for tag `tags[t]` (names as in the CSV)."""

    probabilities: np.ndarray  # float32 [N, T]
    tags: list[str]
    categories: np.ndarray  # int [T]

    def __len__(self) -> int:
        return len(self.probabilities)

    def column(self, tag: str) -> np.ndarray:
        """[N] probabilities of one tag (any spelling)."""
        keys = [tag_key(t) for t in self.tags]
        return self.probabilities[:, keys.index(tag_key(tag))]


def read_selected_tags(path: Path) -> tuple[list[str], np.ndarray]:
    """(names, categories) from a `selected_tags.csv`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = tuple(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise fail(path, f"cannot read ({e})") from None
    missing = [c for c in ("name", "category") if c not in columns]
    if missing:
        raise fail(path, f"no column {', '.join(missing)} (a WD tag list has columns {','.join(TAG_COLUMNS)})")
    if not rows:
        raise fail(path, "no tags")
    names, categories = [], []
    for line, row in enumerate(rows, start=2):
        try:
            categories.append(int(row["category"]))
        except (TypeError, ValueError):
            raise fail(path, f"line {line}: category {row['category']!r} is not a whole number") from None
        names.append(row["name"])
    return names, np.array(categories, dtype=np.int64)


def to_rgb_on_white(image) -> Image.Image:
    """RGB with transparent pixels composited on white (any PIL mode, or an [H, W, 3|4] uint8 array)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        canvas = Image.new("RGBA", image.size, WHITE + (255,))
        canvas.alpha_composite(image.convert("RGBA"))
        return canvas.convert("RGB")
    return image.convert("RGB")


def preprocess(image, size: int) -> np.ndarray:
    """One image → [size, size, 3] float32, 0–255, BGR: on white, padded to a centred white square, resized."""
    image = to_rgb_on_white(image)
    width, height = image.size
    side = max(width, height)
    if width != height:
        square = Image.new("RGB", (side, side), WHITE)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    if side != size:
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32)[:, :, ::-1]


def onnx_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class TaggerJudge(Judge):
    name = "tagger"

    def __init__(self, folder: str | Path, general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
                 character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
                 tag_thresholds: Mapping[str, float] | None = None, batch_size: int = 64, threads: int = 0,
                 progress: bool = False):
        folder = Path(folder)
        if not folder.is_dir():
            raise fail(folder, f"no such tagger folder (a WD tagger folder holds {MODEL_FILE} and {TAGS_FILE})")
        for file in (MODEL_FILE, TAGS_FILE):
            if not (folder / file).is_file():
                raise fail(folder / file, f"missing (a WD tagger folder holds {MODEL_FILE} and {TAGS_FILE})")
        for label, value in (("general threshold", general_threshold), ("character threshold", character_threshold)):
            if not 0.0 <= value <= 1.0:
                raise TunelabError(f"tagger {label} {value}: must be in [0, 1]")
        self.folder = folder
        self.tags, self.categories = read_selected_tags(folder / TAGS_FILE)
        self._index: dict[str, int] = {}
        for i, tag in enumerate(self.tags):
            self._index.setdefault(tag_key(tag), i)  # two spellings of one tag in a CSV: the first one is read
        self.thresholds = np.where(self.categories == CHARACTER, character_threshold, general_threshold).astype(np.float64)
        for tag, value in (tag_thresholds or {}).items():
            if tag_key(tag) not in self._index:
                raise TunelabError(f"tagger threshold for {tag!r}: {self._unknown(tag)}")
            if not 0.0 <= value <= 1.0:
                raise TunelabError(f"tagger threshold for {tag!r} {value}: must be in [0, 1]")
            self.thresholds[self._index[tag_key(tag)]] = value
        self._threshold_settings = f"{general_threshold}/{character_threshold}/{sorted((tag_thresholds or {}).items())}"
        self.batch_size = batch_size
        self.progress = progress
        self.outputs_are_logits = False
        self._session = self._load_session(folder / MODEL_FILE, threads)

    def identity(self) -> str:
        if not hasattr(self, "_identity"):  # hashed once: a published tagger is ~300 MB
            self._identity = (f"tagger {file_digest(self.folder / MODEL_FILE, self.folder / TAGS_FILE)} thresholds "
                              f"{self._threshold_settings}")
        return self._identity

    def _load_session(self, path: Path, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=onnx_providers())
        except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid models
            raise fail(path, f"not a loadable ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        shape = session.get_inputs()[0].shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise fail(path, f"input shape {shape}: expected NHWC [batch, size, size, 3] with a fixed square size")
        self.input_size = int(shape[1])
        self._fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        outputs = session.get_outputs()[0].shape
        if outputs and isinstance(outputs[-1], int) and outputs[-1] != len(self.tags):
            raise fail(path, f"outputs {outputs[-1]} tags but {TAGS_FILE} lists {len(self.tags)}")
        self.providers = session.get_providers()
        return session

    # -- names ---------------------------------------------------------------------------------------------------

    def _unknown(self, tag: str) -> str:
        keys = {tag_key(t): t for t in self.tags}
        close = difflib.get_close_matches(tag_key(tag), list(keys), n=3, cutoff=0.6)
        hint = f"closest known: {', '.join(keys[k] for k in close)}" if close else "no similar tag"
        return f"not in {self.folder / TAGS_FILE} ({hint})"

    def index(self, tag: str) -> int:
        """Column of `tag` (any spelling) in the readings."""
        try:
            return self._index[tag_key(tag)]
        except KeyError:
            raise TunelabError(f"tag {tag!r}: {self._unknown(tag)}") from None

    # -- the Judge interface ---------------------------------------------------------------------------------------

    def check(self, expectation: Expectation) -> str | None:
        if not expectation.tags and not expectation.absent:
            return "the tagger needs tags to look for (`expect` and / or `absent`)"
        for tag in (*expectation.tags, *expectation.absent):
            if tag_key(tag) not in self._index:
                return f"tag {tag!r}: {self._unknown(tag)}"
        return None

    def read(self, images: Sequence) -> TagReadings:
        batch = self._fixed_batch or self.batch_size
        input_name = self._session.get_inputs()[0].name
        chunks = []
        for start in tqdm(range(0, len(images), batch), desc="tagger", unit="batch", disable=not self.progress):
            pixels = np.stack([preprocess(im, self.input_size) for im in images[start : start + batch]])
            count = len(pixels)
            if self._fixed_batch and count < batch:  # a model exported with a fixed batch takes only that many
                pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch - count, axis=0)])
            out = np.asarray(self._session.run(None, {input_name: pixels})[0], dtype=np.float32)
            if out.ndim != 2 or out.shape[1] != len(self.tags):
                raise fail(self.folder / MODEL_FILE, f"output shape {list(out.shape)}: expected [batch, {len(self.tags)}]")
            chunks.append(out[:count])
        probabilities = np.concatenate(chunks) if chunks else np.zeros((0, len(self.tags)), dtype=np.float32)
        # Published models end in a sigmoid; a model that returns logits is told apart by values outside [0, 1]
        # (and stays marked, so later reads of the same judge are treated alike).
        if probabilities.size and (probabilities.min() < 0.0 or probabilities.max() > 1.0):
            self.outputs_are_logits = True
        if self.outputs_are_logits:
            probabilities = 1.0 / (1.0 + np.exp(-probabilities))
        return TagReadings(probabilities, list(self.tags), self.categories.copy())

    def verdict(self, readings: TagReadings, expectation: Expectation) -> Judged:
        expected = [self.index(t) for t in expectation.tags]
        absent = [self.index(t) for t in expectation.absent]
        if not expected and not absent:
            raise TunelabError("tagger verdict: no tags to look for")
        p = readings.probabilities.astype(np.float64)
        passed = np.ones(len(p), dtype=bool)
        score = np.ones(len(p), dtype=np.float64)
        if expected:
            passed &= (p[:, expected] > self.thresholds[expected]).all(axis=1)
            score = np.minimum(score, p[:, expected].min(axis=1))
        if absent:
            passed &= (p[:, absent] <= self.thresholds[absent]).all(axis=1)
            score = np.minimum(score, 1.0 - p[:, absent].max(axis=1))
        return Judged(passed, score)
