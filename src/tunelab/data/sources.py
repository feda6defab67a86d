"""Where items come from: image folders with sidecars, sd-scripts `in_json` metadata, sd-scripts dataset TOML.

Each source yields `Candidate`s (an image path, its text, its subset, its source's buckets) in a deterministic order; `prepare` checks the
images and writes the index. Text problems that make an item unusable (a caption that is not UTF-8) are carried as
a `skip_reason`, never raised."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tunelab.data.config import IMAGE_EXTENSIONS, BucketConfig, FolderSource, KohyaMetadataSource, Source
from tunelab.data.index import Subset
from tunelab.data.kohya_dataset_config import expand_kohya_dataset_config
from tunelab.errors import fail

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_PLAIN_KEY = re.compile(r'[ \t\n\r]*"((?:[^"\\]|\\.)*)"[ \t\n\r]*:')  # "key" followed by its colon
_SEPARATOR = re.compile(r"[ \t\n\r]*([,}])")


@dataclass(frozen=True, slots=True)
class ItemText:
    tags: str | None = None
    caption: str | None = None
    tag_categories: dict[str, list[str]] | None = None
    skip_reason: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Candidate:
    path: Path
    subset: Subset
    text: ItemText
    skip_reason: str | None = None  # the image itself is missing (metadata names a file that is not there)
    buckets: BucketConfig | None = None  # its source's own buckets; None: the run's [data.buckets]


def iter_candidates(sources: list[Source]) -> Iterator[Candidate]:
    for source in sources:
        if isinstance(source, FolderSource):
            yield from iter_folder(source)
        elif isinstance(source, KohyaMetadataSource):
            yield from iter_kohya_metadata(source)
        else:
            for expanded in expand_kohya_dataset_config(source):
                yield from iter_candidates([expanded])


# --- text sidecars ---------------------------------------------------------------------------------------------


def read_text_file(path: Path) -> str | None:
    """UTF-8 text (a BOM is dropped) stripped of surrounding whitespace; None if the file is not valid UTF-8."""
    try:
        return path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return None


def _as_tag_string(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v).strip() for v in value)
    return str(value).strip()


def _categories_from_json(data: dict) -> dict[str, list[str]] | None:
    """`tag_categories: {cat: [tags]}`, or danbooru's `tag_string_<cat>` (space-separated, underscores in tags)."""
    if isinstance(data.get("tag_categories"), dict):
        return {str(k): [str(t) for t in v] for k, v in data["tag_categories"].items()}
    found = {k.removeprefix("tag_string_"): v.split() for k, v in data.items() if k.startswith("tag_string_") and isinstance(v, str)}
    return found or None


def read_sidecars(image: Path, names: set[str], source: FolderSource) -> ItemText:
    """Tags / caption / JSON next to `image` (`names` = the folder's file names, so no extra stat per image)."""
    tags = caption = categories = None
    notes: list[str] = []
    if source.json_sidecar and image.stem + ".json" in names:
        try:
            data = json.loads(image.with_suffix(".json").read_bytes().decode("utf-8-sig"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            return ItemText(skip_reason="bad_json_sidecar")
        tags, caption = _as_tag_string(data.get("tags")), data.get("caption")
        caption = None if caption is None else str(caption).strip()
        categories = _categories_from_json(data)
        if tags is None and categories:
            tags = ", ".join(t for group in categories.values() for t in group)
    for extension, field in ((source.tags_extension, "tags"), (source.caption_extension, "caption")):
        if extension and image.stem + extension in names:
            text = read_text_file(image.with_suffix(extension))
            if text is None:
                return ItemText(skip_reason=f"{field}_not_utf8")
            if field == "tags":
                tags = text
            else:
                caption = text
    if tags is None and caption is None:
        notes.append("no_caption")
    elif not tags and not caption:
        notes.append("empty_caption")
    return ItemText(tags, caption, categories, None, tuple(notes))


# --- folders ---------------------------------------------------------------------------------------------------


def iter_folder(source: FolderSource) -> Iterator[Candidate]:
    """Images under `source.path` in sorted order (recursively unless told not to); `N_name` folders repeat N×."""
    root = Path(source.path)
    if not root.is_dir():
        raise fail(root, "image folder not found")
    extensions = {e.lower() for e in source.extensions}
    base = Subset(str(root), source.repeats, source.is_reg, source.caption_options or None)
    subset_of: dict[str, Subset] = {str(root): base}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        folder_path = Path(folder)
        subset = subset_of[folder]
        if not source.recursive:
            dirs.clear()
        for d in dirs:
            subset_of[os.path.join(folder, d)] = _child_subset(subset, folder_path / d, source)
        names = set(files)
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in extensions:
                image = folder_path / name
                yield Candidate(image, subset, read_sidecars(image, names, source), buckets=source.buckets)


def _child_subset(parent: Subset, folder: Path, source: FolderSource) -> Subset:
    match = _REPEAT_FOLDER.match(folder.name) if source.repeat_folders else None
    if match is None:
        return parent
    options = dict(source.caption_options)
    options.setdefault("class_tokens", match.group(2))  # sd-scripts: the folder's name is the fallback caption
    return Subset(str(folder), int(match.group(1)) * source.repeats, source.is_reg, options)


# --- sd-scripts in_json ----------------------------------------------------------------------------------------


class _JsonStream:
    """Reads one JSON value at a time from a text file with a bounded buffer (json.raw_decode on each value)."""

    def __init__(self, path: Path, chunk_chars: int):
        self.path, self.chunk_chars = path, chunk_chars
        self.file = open(path, encoding="utf-8-sig")
        self.buffer, self.pos, self.consumed, self.eof = "", 0, 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self) -> None:
        self.consumed += self.pos
        more = self.file.read(max(self.chunk_chars, len(self.buffer) - self.pos))  # grows for one huge value
        self.buffer, self.pos, self.eof = self.buffer[self.pos :] + more, 0, not more

    def _skip_whitespace(self) -> None:
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer) or self.eof:
                return
            self._fill()

    def error(self, problem: str):
        return fail(self.path, f"invalid JSON near character {self.consumed + self.pos}: {problem}")

    def char(self) -> str:
        self._skip_whitespace()
        if self.pos >= len(self.buffer):
            raise self.error("unexpected end of file")
        self.pos += 1
        return self.buffer[self.pos - 1]

    def peek(self) -> str:
        self._skip_whitespace()
        return self.buffer[self.pos] if self.pos < len(self.buffer) else ""

    def _match(self, pattern: re.Pattern) -> re.Match | None:
        """A match at the current position (one refill allowed); None sends the caller to the general path."""
        found = pattern.match(self.buffer, self.pos)
        if found is None and not self.eof:
            self._fill()
            found = pattern.match(self.buffer, self.pos)
        if found is not None:
            self.pos = found.end()
        return found

    def key(self) -> str:
        """An object key and its colon: one regex on the common path, the JSON decoder otherwise."""
        found = self._match(_PLAIN_KEY)
        if found is not None:
            raw = found.group(1)
            return json.loads(f'"{raw}"') if "\\" in raw else raw
        key = self.value()
        if not isinstance(key, str):
            raise self.error("object key is not a string")
        if self.char() != ":":
            raise self.error("expected ':'")
        return key

    def separator(self) -> str:
        found = self._match(_SEPARATOR)
        return found.group(1) if found is not None else self.char()

    def value(self):
        self._skip_whitespace()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
                if end < len(self.buffer) or self.eof:  # a number at the very end might continue in the next chunk
                    self.pos = end
                    return value
            except json.JSONDecodeError as e:
                if self.eof:
                    raise self.error(e.msg) from None
            self._fill()

    def close(self) -> None:
        self.file.close()


def iter_json_object(path: Path, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, object]]:
    """(key, value) pairs of a top-level JSON object, one at a time.

    Trade-off: `json.load` of sd-scripts' 14 GB `meta_lat.json` needs several times the file size in RAM; this
    holds one entry plus a ~1 MB buffer. It is a little slower per byte (a Python step per entry around the C
    decoder) and a syntax error is found only when reached, after earlier entries were already yielded."""
    stream = _JsonStream(Path(path), chunk_chars)
    try:
        if stream.char() != "{":
            raise stream.error("the top level is not an object")
        if stream.peek() == "}":
            return
        while True:
            key = stream.key()
            yield key, stream.value()
            separator = stream.separator()
            if separator == "}":
                return
            if separator != ",":
                raise stream.error("expected ',' or '}'")
    finally:
        stream.close()


def _find_image(key: str, image_dir: Path, extensions: tuple[str, ...]) -> Path | None:
    """As sd-scripts resolves a metadata key: the path as written (absolute, or inside the image folder), else the
    image folder + key + each image extension (stem keys; sd-scripts also tries the upper-case extensions)."""
    direct = Path(key) if os.path.isabs(key) else image_dir / key
    if direct.is_file():
        return direct
    for extension in (*extensions, *(e.upper() for e in extensions)):
        candidate = image_dir / (key + extension)
        if candidate.is_file():
            return candidate
    return None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """sd-scripts' JSONL metadata: one {"image_path", "caption", "tags", ...} object per line."""
    with open(path, encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as e:
                raise fail(path, f"line {number}: invalid JSON ({e.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("image_path"), str):
                raise fail(path, f"line {number}: not an object with an image_path")
            yield entry["image_path"], entry


def iter_kohya_metadata(source: KohyaMetadataSource) -> Iterator[Candidate]:
    """Entries of an `in_json` file (or sd-scripts' `.jsonl`), streamed. `caption` and `tags` are kept apart (the
    caption policy joins them); `train_resolution` / `image_size` are not used: buckets come from the real size."""
    path = Path(source.path)
    if not path.is_file():
        raise fail(path, "metadata file not found")
    image_dir = Path(source.image_dir) if source.image_dir else path.parent
    subset = Subset(str(path), source.repeats, source.is_reg, source.caption_options or None)
    entries = _iter_jsonl(path) if path.suffix.lower() == ".jsonl" else iter_json_object(path)
    for key, entry in entries:
        if not isinstance(entry, dict):
            raise fail(path, f"entry {key!r} is not an object")
        tags, caption = _as_tag_string(entry.get("tags")), entry.get("caption")
        notes = () if (tags or caption) else (("no_caption",) if tags is None and caption is None else ("empty_caption",))
        text = ItemText(tags, None if caption is None else str(caption).strip(), None, None, notes)
        image = _find_image(key, image_dir, IMAGE_EXTENSIONS)
        if image is None:
            yield Candidate(image_dir / key, subset, text, skip_reason="image_not_found", buckets=source.buckets)
        else:
            yield Candidate(image, subset, text, buckets=source.buckets)
