"""The toy world's vocabulary: colours, shapes, locations, characters, styles, and every tag with its category.

Everything here is data. The generator (`world.py`) draws scenes from it, the judge (`judge.py`) reads pixels back
into these labels, and caption policies read `tag_categories()` to order tags the way booru-trained models expect.

Which concept the base model knows, half-knows or never saw is decided by the worlds (`worlds.py`), not here."""

from __future__ import annotations

# Saturated subject colours (RGB 0-255). Purple appears only in the finetune world (the unknown concept), but the
# VAE is trained on every colour here so it can still decode purple.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 200),
}
KNOWN_COLOURS = ("red", "green", "blue", "yellow")

SHAPES = ("circle", "square", "triangle", "star")
KNOWN_SHAPES = ("circle", "square", "triangle")

# Backgrounds: (top colour, bottom colour, row where the bottom starts). Muted so subjects stand out.
LOCATIONS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], int]] = {
    "white background": ((235, 235, 235), (235, 235, 235), 32),
    "beach": ((140, 200, 240), (200, 170, 110), 18),
    "forest": ((30, 75, 40), (30, 75, 40), 32),
    "night": ((40, 30, 90), (40, 30, 90), 32),
}

SKIN = (245, 195, 150)
OUTLINE = (0, 0, 0)
WHEEL = (70, 70, 70)

# A character is a fixed composite of attribute colours (hair, eyes, shirt), all from COLOURS.
CHARACTERS: dict[str, dict[str, str]] = {
    "mira": {"hair": "red", "eyes": "green", "shirt": "blue"},  # known: common and always complete in the base world
    "kiko": {"hair": "yellow", "eyes": "blue", "shirt": "red"},  # half-known: rare, eyes usually closed in the base world
}
CHARACTER_PARTS = ("hair", "eyes", "shirt")
COPYRIGHT = "star quest"  # both characters' series

# The unknown concept: a tag that never occurs in the base world, drawn as a purple star (unseen colour and shape).
UNKNOWN_TAG = "zorb"
UNKNOWN_LOOK = {"colour": "purple", "shape": "star"}

# The finetune world's style, carried by one artist: a dark outline around the subject.
STYLE_TAG = "outline"
STYLE_ARTIST = "inkwell"
BASE_ARTISTS = ("crayonkid", "pixelpaw")  # artist tags with no visual effect in the base world

QUALITY_TAGS = ("masterpiece", "best quality", "high quality", "normal quality", "low quality")

CLOSED_EYES_TAG = "closed eyes"  # kiko's incomplete look in the base world: no eye colour to learn


def attribute_tag(part: str, colour: str) -> str:
    """Booru-style attribute tag, e.g. ("hair", "red") → "red hair"."""
    return f"{colour} {part}"


def tag_categories() -> dict[str, str]:
    """Every tag the worlds use → its booru category: character, copyright, artist, general or meta.

    Quality tags are "meta" (they describe the image, not its content); `QUALITY_TAGS` lists them for policies
    that move them to the front or back."""
    categories: dict[str, str] = {}
    for name in CHARACTERS:
        categories[name] = "character"
    categories[UNKNOWN_TAG] = "character"  # like a new character name: one tag for a whole look
    categories[COPYRIGHT] = "copyright"
    for artist in (*BASE_ARTISTS, STYLE_ARTIST):
        categories[artist] = "artist"
    general = [*COLOURS, *SHAPES, "car", *LOCATIONS, STYLE_TAG, CLOSED_EYES_TAG]
    general += [attribute_tag(part, colour) for part in CHARACTER_PARTS for colour in COLOURS]
    for tag in general:
        categories[tag] = "general"
    for tag in QUALITY_TAGS:
        categories[tag] = "meta"
    return categories


CATEGORY_ORDER = ("character", "copyright", "artist", "general", "meta")
