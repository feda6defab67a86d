"""AUTOMATIC1111 prompt emphasis syntax → a list of (text, weight) segments for `encode_prompts`.

Rules (as A1111 applies them):
  `(x)` multiplies x's weight by 1.1, `[x]` divides it by 1.1, `(x:1.5)` multiplies it by 1.5; brackets nest and
  multiply (`((x))` = 1.21, `[[x]]` = 1/1.1²). `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters (booru tags
  like `astolfo_\\(fate\\)`). A bracket that is never closed applies to the rest of the prompt; a closing bracket
  with nothing open is kept as text. `BREAK` (a whole word, upper case) ends the current 75-token chunk.
Adjacent segments with equal weight are merged; an empty prompt is `[("", 1.0)]`."""

from __future__ import annotations

import re

from tunelab.models.text_conditioning import BREAK, Segments, is_break

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# One token of the syntax per match, tried in order: escapes, brackets, an explicit weight that closes a round
# bracket, plain text, a lone colon.
_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]               # escaped bracket or backslash
  | \\                         # a lone backslash (dropped, as A1111 does)
  | [(\[]                      # opening bracket
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)   # `:1.5)`
  | [)\]]                      # closing bracket
  | [^\\()\[\]:]+              # text
  | :                          # a colon that is not a weight
""",
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_prompt(prompt: str) -> Segments:
    """`"a (red:1.5) [circle]"` → `[("a ", 1.0), ("red", 1.5), (" ", 1.0), ("circle", 0.909…)]`."""
    segments: list[list] = []  # [text, weight], mutable while brackets close
    open_round: list[int] = []  # index in `segments` where each open bracket started
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for segment in segments[start:]:
            if not is_break(segment[1]):
                segment[1] *= factor

    for match in _TOKEN.finditer(prompt):
        token, weight = match.group(0), match.group("weight")
        if token.startswith("\\"):
            segments.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(segments))
        elif token == "[":
            open_square.append(len(segments))
        elif weight is not None and open_round and _is_number(weight):
            multiply_from(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            multiply_from(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            multiply_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    segments.append(["BREAK", BREAK])
                segments.append([part, 1.0])

    for start in open_round:  # unclosed brackets reach to the end
        multiply_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        multiply_from(start, SQUARE_MULTIPLIER)
    return _merge(segments)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _merge(segments: list[list]) -> Segments:
    """Drop empty texts, join neighbours of equal weight (never two BREAKs)."""
    merged: list[list] = []
    for text, weight in segments:
        if not text and not is_break(weight):
            continue
        if merged and merged[-1][1] == weight and not is_break(weight):
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(text, weight) for text, weight in merged] or [("", 1.0)]

