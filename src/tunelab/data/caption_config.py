"""The `[data.captions]` table: which caption policy turns an item's tags / caption into its training prompt.

Option names follow sd-scripts where it has the same thing (`shuffle_caption`, `keep_tokens`,
`keep_tokens_separator`, `caption_dropout_rate`, `caption_tag_dropout_rate`, `caption_dropout_every_n_epochs`,
`enable_wildcard`, `caption_prefix`, `caption_suffix`), so an sd-scripts subset's options map onto it one to one
(`for_subset`). Paths are relative to the TOML file's folder (`resolved`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from tunelab.config import StrictModel, describe_validation_error
from tunelab.errors import TunelabError

# Danbooru-style quality words (several model families add them at training time; position matters).
DEFAULT_QUALITY_TAGS = [
    "masterpiece", "best quality", "amazing quality", "great quality", "high quality", "good quality",
    "normal quality", "medium quality", "low quality", "bad quality", "worst quality",
]  # fmt: skip
DEFAULT_CATEGORY_ORDER = ["artist", "character", "copyright", "general", "meta"]


class CaptionConfig(StrictModel):
    # --- which text: dual tag + caption ---
    # caption_first / tags_first: both, joined by `separator` (caption_first is what sd-scripts does with an
    # in_json file); random: one of them (caption with `caption_probability`); tags / caption: only that one.
    # A missing side falls back to the other. Shuffle, keep_tokens and tag dropout act on the tags only.
    combine: Literal["caption_first", "tags_first", "random", "tags", "caption"] = "caption_first"
    caption_probability: float = Field(0.5, ge=0.0, le=1.0)
    separator: str = ", "  # between tags, and between tags and caption (sd-scripts caption_separator)

    # --- tag normalisation ---
    underscores: Literal["to_spaces", "keep", "to_underscores"] = "to_spaces"  # `long_hair` → `long hair`
    # `astolfo_\(fate\)`: "unescape" trains on `astolfo (fate)` (the text encoder sees the text as-is, no A1111
    # emphasis parsing at training time); "escape" writes `astolfo \(fate\)` (for prompts meant for A1111).
    parentheses: Literal["unescape", "escape", "keep"] = "unescape"
    deduplicate: bool = True

    # --- category ordering (e.g. artist > character > copyright > general > meta) ---
    order_by_category: bool = False
    category_order: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORY_ORDER))
    # {tag: category} JSON, or CSV `tag,category[,...]` (category a name or danbooru's number: 0 general,
    # 1 artist, 3 copyright, 4 character, 5 meta). An item's own categories (JSON sidecar) take precedence.
    tag_categories_file: Path | None = None
    unknown_category: str = "general"  # where tags without a known category go

    # --- quality tags ---
    quality_position: Literal["keep", "front", "back", "strip"] = "keep"
    quality_tags: list[str] = Field(default_factory=lambda: list(DEFAULT_QUALITY_TAGS))

    # --- randomness (sd-scripts semantics) ---
    shuffle_caption: bool = False
    keep_tokens: int = Field(0, ge=0)  # the first N tags stay in place (not shuffled, not dropped)
    keep_tokens_separator: str = ""  # e.g. "|||": tags before it are fixed; after a second one, a fixed suffix
    secondary_separator: str = ""  # e.g. ";;;": `a;;;b` shuffles / drops as one tag, written as `a, b`
    caption_tag_dropout_rate: float = Field(0.0, ge=0.0, le=1.0)  # each non-fixed tag dropped with this rate
    caption_dropout_rate: float = Field(0.0, ge=0.0, le=1.0)  # whole prompt → "" (CFG / unconditional)
    caption_dropout_every_n_epochs: int = Field(0, ge=0)  # every Nth epoch all prompts are ""
    enable_wildcard: bool = False  # `{a|b}` picks one; a multi-line caption picks one line

    caption_prefix: str = ""
    caption_suffix: str = ""
    class_tokens: str | None = None  # the prompt of an item with no tags and no caption (DreamBooth folders)

    def resolved(self, base_dir: Path) -> "CaptionConfig":
        if self.tag_categories_file is None:
            return self
        return self.model_copy(update={"tag_categories_file": (Path(base_dir) / self.tag_categories_file).resolve()})

    def is_deterministic(self) -> bool:
        """Same prompt for an item in every epoch (what a text-embedding cache needs)."""
        return text_randomness(self) is None

    def for_subset(self, options: dict | None) -> tuple["CaptionConfig", list[str]]:
        """This config with a subset's sd-scripts caption options applied; also the option names it ignored."""
        if not options:
            return self, []
        known = {k: v for k, v in options.items() if k in CaptionConfig.model_fields}
        if "caption_separator" in options:  # sd-scripts name
            known["separator"] = options["caption_separator"]
        ignored = sorted(k for k in options if k not in known and k != "caption_separator")
        try:
            return CaptionConfig.model_validate({**self.model_dump(), **known}), ignored
        except ValidationError as e:
            raise TunelabError(f"subset caption options: {describe_validation_error(e)}") from None


def text_randomness(config: CaptionConfig) -> str | None:
    """Why this policy gives an item different prompts in different epochs, or None when it never does."""
    reasons = [
        (config.shuffle_caption, "shuffle_caption"),
        (config.caption_tag_dropout_rate > 0, "caption_tag_dropout_rate > 0"),
        (config.caption_dropout_rate > 0, "caption_dropout_rate > 0"),
        (config.caption_dropout_every_n_epochs > 0, "caption_dropout_every_n_epochs > 0"),
        (config.enable_wildcard, "enable_wildcard (wildcards / one random line)"),
        (config.combine == "random" and 0 < config.caption_probability < 1, 'combine = "random"'),
    ]
    found = [why for on, why in reasons if on]
    return ", ".join(found) if found else None
