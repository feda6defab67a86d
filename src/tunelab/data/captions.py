"""Caption policies: an item's tags and caption → the prompt one training step sees.

Each step below is a small function selected by `CaptionConfig`; `CaptionPolicy` runs them in this order:

1. caption dropout (`caption_dropout_rate`, `caption_dropout_every_n_epochs`) → "" (CFG / unconditional);
2. wildcards `{a|b}` and one random line of a multi-line caption (`enable_wildcard`);
3. tags: split on commas (and newlines), normalise (underscores, escaped parentheses), de-duplicate;
4. quality tags taken out (`quality_position` front / back / strip; "keep" leaves them in place);
5. order by category (artist > character > copyright > general > meta) when categories are known;
6. fixed tags (`keep_tokens`, or everything before `keep_tokens_separator`; after a second separator, a fixed
   suffix) stay; the rest get tag dropout, then shuffling (`a;;;b` with `secondary_separator` moves as one tag);
7. quality tags put back at the front or the back (never shuffled or dropped: their position is the point);
8. tags and caption combined (`combine`), prefix / suffix added; nothing at all → `class_tokens` or "".

All randomness comes from the `random.Random` passed in; `item_rng(seed, epoch, item_id, occurrence)` makes it a
function of those four numbers only, so a prompt never depends on batch order, process count or resume point."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Protocol

from tunelab.data.caption_config import CaptionConfig
from tunelab.errors import TunelabError, fail

# Danbooru's numeric tag categories (tag CSVs of tag-autocomplete tools use these numbers).
DANBOORU_CATEGORY_NUMBERS = {"0": "general", "1": "artist", "3": "copyright", "4": "character", "5": "meta"}
_WILDCARD = re.compile(r"\{([^{}]*)\}")
_SPACES = re.compile(r"\s+")


class CaptionedItem(Protocol):
    """What a policy reads from an item (an `IndexItem` has these)."""

    tags: str | None
    caption: str | None
    tag_categories: dict[str, list[str]] | None


def item_rng(seed: int, epoch: int, item_id: int, occurrence: int = 0) -> random.Random:
    """The caption randomness of one appearance of an item (`occurrence` counts repeats within the epoch).
    Seeded from a string: stable across processes and Python runs (no hash randomisation)."""
    return random.Random(f"caption:{seed}:{epoch}:{item_id}:{occurrence}")


# --- tag normalisation ---------------------------------------------------------------------------------------


def tag_key(tag: str) -> str:
    """The form tags are compared in: `Long_Hair`, `long hair`, `astolfo_\\(fate\\)` → `long hair`, `astolfo (fate)`."""
    return _SPACES.sub(" ", tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ")).strip().lower()


def normalize_tag(tag: str, config: CaptionConfig) -> str:
    tag = _SPACES.sub(" ", tag).strip()
    # Emoticon tags (`^_^`, `o_o`, `>_<`) are their underscores: keep them, as taggers do.
    if config.underscores == "to_spaces" and len(tag) > 3:
        tag = tag.replace("_", " ")
    elif config.underscores == "to_underscores":
        tag = tag.replace(" ", "_")
    if config.parentheses != "keep":
        tag = tag.replace("\\(", "(").replace("\\)", ")")
        if config.parentheses == "escape":
            tag = tag.replace("(", "\\(").replace(")", "\\)")
    return tag


def split_tags(text: str | None) -> list[str]:
    """Comma- (or newline-) separated tags, stripped, empty ones dropped."""
    if not text:
        return []
    return [t.strip() for t in re.split(r"[,\n]", text) if t.strip()]


def normalize_tags(tags: list[str], config: CaptionConfig, seen: set[str] | None = None) -> list[str]:
    """Normalise each tag; with `deduplicate`, drop tags whose `tag_key` is in `seen` (updated in place)."""
    seen = set() if seen is None else seen
    out = []
    for tag in tags:
        key = tag_key(tag)
        if config.deduplicate and key in seen:
            continue
        seen.add(key)
        out.append(normalize_tag(tag, config))
    return out


# --- categories ----------------------------------------------------------------------------------------------


def load_tag_categories(path: str | Path) -> dict[str, str]:
    """{tag_key: category} from a JSON object {tag: category} or a CSV `tag,category[,...]` (no header needed)."""
    path = Path(path)
    if not path.is_file():
        raise fail(path, "tag category file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise fail(path, "tag category file is not UTF-8") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise fail(path, f"invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise fail(path, "expected a JSON object {tag: category}")
        pairs = data.items()
    else:
        pairs = ((row[0], row[1]) for row in csv.reader(text.splitlines()) if len(row) >= 2)
    categories = {}
    for tag, category in pairs:
        category = DANBOORU_CATEGORY_NUMBERS.get(str(category).strip(), str(category).strip().lower())
        categories[tag_key(str(tag))] = category
    return categories


def order_by_category(tags: list[str], category_of: dict[str, str], config: CaptionConfig) -> list[str]:
    """Stable sort by the rank of each tag's category in `category_order` (unknown → `unknown_category`)."""
    rank = {c: i for i, c in enumerate(config.category_order)}
    last = len(rank)

    def position(tag: str) -> int:
        return rank.get(category_of.get(tag_key(tag), config.unknown_category), last)

    return sorted(tags, key=position)


def item_categories(item: CaptionedItem) -> dict[str, str]:
    """{tag_key: category} from an item's own `tag_categories` ({category: [tags]})."""
    return {tag_key(t): category for category, tags in (item.tag_categories or {}).items() for t in tags}


# --- quality tags --------------------------------------------------------------------------------------------


def take_quality_tags(groups: list[list[str]], quality_tags: list[str]) -> tuple[list[list[str]], list[str]]:
    """Remove quality tags from every group; return (groups without them, the quality tags in the order found)."""
    wanted = {tag_key(q) for q in quality_tags}
    found: list[str] = []
    kept = []
    for group in groups:
        kept.append([t for t in group if tag_key(t) not in wanted])
        found.extend(t for t in group if tag_key(t) in wanted)
    return kept, found


# --- shuffle / keep / dropout --------------------------------------------------------------------------------


def split_fixed(tag_text: str, config: CaptionConfig) -> tuple[str, str, str]:
    """(fixed prefix, shuffled middle, fixed suffix) as raw text, by `keep_tokens_separator` (sd-scripts:
    `fixed ||| shuffled ||| fixed suffix`). Without the separator everything is in the middle."""
    separator = config.keep_tokens_separator
    if not separator or separator not in tag_text:
        return "", tag_text, ""
    parts = tag_text.split(separator)
    return parts[0], parts[1], separator.join(parts[2:])


def drop_and_shuffle(tags: list[str], config: CaptionConfig, rng: random.Random) -> list[str]:
    """Tag dropout (each tag independently), then shuffle (sd-scripts `caption_tag_dropout_rate`, `shuffle_caption`)."""
    if config.caption_tag_dropout_rate > 0:
        tags = [t for t in tags if rng.random() >= config.caption_tag_dropout_rate]
    if config.shuffle_caption:
        tags = list(tags)
        rng.shuffle(tags)
    return tags


# --- caption text ----------------------------------------------------------------------------------------------


def expand_wildcards(text: str, rng: random.Random) -> str:
    """Each `{a|b|c}` → one of its options (innermost first, so nesting works)."""
    while True:
        expanded = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), text)
        if expanded == text:
            return text
        text = expanded


def pick_line(text: str, rng: random.Random) -> str:
    """One non-empty line of a multi-line caption, chosen at random."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return rng.choice(lines) if lines else ""


def one_line(text: str) -> str:
    """A multi-line caption without wildcard mode: its lines joined by spaces."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def combine_texts(tags: str, caption: str, config: CaptionConfig, rng: random.Random) -> str:
    """Dual tag + caption. A side that is empty falls back to the other."""
    if not tags or not caption:
        return tags or caption
    if config.combine == "tags_first":
        return tags + config.separator + caption
    if config.combine == "caption_first":
        return caption + config.separator + tags
    if config.combine == "random":
        return caption if rng.random() < config.caption_probability else tags
    return tags if config.combine == "tags" else caption


# --- the policy ----------------------------------------------------------------------------------------------


class CaptionPolicy:
    """`policy(item, rng, epoch=...)` → prompt. Build with `CaptionPolicy.from_config(config)` (reads the tag
    category file once)."""

    def __init__(self, config: CaptionConfig, categories: dict[str, str] | None = None):
        self.config = config
        self.categories = categories or {}

    @classmethod
    def from_config(cls, config: CaptionConfig) -> "CaptionPolicy":
        categories = load_tag_categories(config.tag_categories_file) if config.tag_categories_file else None
        return cls(config, categories)

    def with_config(self, config: CaptionConfig) -> "CaptionPolicy":
        """Same category table, other options (a subset's overrides)."""
        return CaptionPolicy(config, self.categories)

    def __call__(self, item: CaptionedItem, rng: random.Random, *, epoch: int = 0) -> str:
        c = self.config
        if c.caption_dropout_every_n_epochs and (epoch + 1) % c.caption_dropout_every_n_epochs == 0:
            return ""
        if c.caption_dropout_rate > 0 and rng.random() < c.caption_dropout_rate:
            return ""
        tags, caption = item.tags or "", item.caption or ""
        if c.enable_wildcard:
            tags, caption = expand_wildcards(tags, rng), pick_line(expand_wildcards(caption, rng), rng)
        else:
            caption = one_line(caption)
        tag_text = c.separator.join(self.process_tags(tags, item, rng))
        if c.secondary_separator:
            tag_text = tag_text.replace(c.secondary_separator, c.separator)
        text = combine_texts(tag_text, caption.strip(), c, rng)
        text = c.separator.join(part for part in (c.caption_prefix, text, c.caption_suffix) if part)
        return text if text else (c.class_tokens or "")

    def process_tags(self, tag_text: str, item: CaptionedItem, rng: random.Random) -> list[str]:
        c = self.config
        seen: set[str] = set()
        fixed, middle, suffix = (normalize_tags(split_tags(part), c, seen) for part in split_fixed(tag_text, c))
        quality: list[str] = []
        if c.quality_position != "keep":
            (fixed, middle, suffix), quality = take_quality_tags([fixed, middle, suffix], c.quality_tags)
        if c.order_by_category:
            category_of = {**self.categories, **item_categories(item)}
            fixed, middle, suffix = (order_by_category(g, category_of, c) for g in (fixed, middle, suffix))
        if not c.keep_tokens_separator or c.keep_tokens_separator not in tag_text:
            fixed, middle = middle[: c.keep_tokens], middle[c.keep_tokens :]
        middle = drop_and_shuffle(middle, c, rng)
        front = quality if c.quality_position == "front" else []
        back = quality if c.quality_position == "back" else []
        return front + fixed + middle + suffix + back


class SubsetPolicies:
    """The policy of each subset of an index: the run's `[data.captions]` with the subset's sd-scripts options
    (keep_tokens, shuffle_caption, ... from a dataset TOML or `caption_options`) on top."""

    def __init__(self, config: CaptionConfig, subsets: dict | None = None):
        self.base = CaptionPolicy.from_config(config)
        self.by_subset: dict[int, CaptionPolicy] = {}
        self.ignored_options: dict[int, list[str]] = {}
        for subset_id, subset in (subsets or {}).items():
            try:
                subset_config, ignored = config.for_subset(dict(subset.caption_options or {}))
            except TunelabError as e:
                raise TunelabError(f"{subset.name}: {e}") from None
            self.by_subset[subset_id] = self.base.with_config(subset_config)
            if ignored:
                self.ignored_options[subset_id] = ignored

    @classmethod
    def for_index(cls, config: CaptionConfig, index) -> "SubsetPolicies":
        return cls(config, index.subsets())

    def policy(self, subset_id: int) -> CaptionPolicy:
        return self.by_subset.get(subset_id, self.base)

    def configs(self) -> list[CaptionConfig]:
        return [self.base.config, *(p.config for p in self.by_subset.values())]

    def prompt(self, item, *, seed: int, epoch: int, occurrence: int = 0) -> str:
        """The prompt of one appearance of an `IndexItem` in an epoch."""
        return self.policy(item.subset_id)(item, item_rng(seed, epoch, item.id, occurrence), epoch=epoch)
