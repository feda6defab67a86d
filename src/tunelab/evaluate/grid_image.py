"""Draw one labelled grid image, A1111 style: column labels on top, row labels on the left, an optional title.

Small images (the toy world's 32×32) are enlarged with nearest-neighbour so each cell is at least `MIN_CELL`
pixels wide and labels fit; the per-cell PNGs keep their real size. A label is wrapped to its cell and cut with
"…" after as many lines as a cell is high (a 1,000-character prompt would otherwise run over the other rows); the
full prompt is in each cell's infotext."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 128
PADDING = 6


def labelled_grid(
    cells: list[list[Image.Image]],
    column_labels: list[str] | None = None,
    row_labels: list[str] | None = None,
    title: str | None = None,
) -> Image.Image:
    """`cells[row][column]`, all the same size. Labels are wrapped to the cell width."""
    rows, columns = len(cells), len(cells[0])
    width, height = cells[0][0].size
    scale = max(1, math.ceil(MIN_CELL / min(width, height)))
    cell_w, cell_h = width * scale, height * scale
    font = ImageFont.load_default(size=max(12, cell_w // 20))
    line_h = font.size + 4

    max_lines = max(1, (cell_h - PADDING) // line_h)
    column_lines = [_fit(label, font, cell_w - PADDING, max_lines) for label in column_labels] if column_labels else []
    left = max(MIN_CELL, cell_w // 2) if row_labels else 0  # row labels: half a cell wide on big images
    row_lines = [_fit(label, font, left - PADDING, max_lines) for label in row_labels] if row_labels else []
    title_lines = _wrap(title, font, columns * cell_w) if title else []
    top = (len(title_lines) + max((len(lines) for lines in column_lines), default=0)) * line_h
    top += 2 * PADDING if top else 0

    canvas = Image.new("RGB", (left + columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, title_lines, font, line_h, left, PADDING, columns * cell_w)
    header_y = PADDING + len(title_lines) * line_h
    for c, lines in enumerate(column_lines):
        _draw_lines(draw, lines, font, line_h, left + c * cell_w, header_y, cell_w)
    for r, lines in enumerate(row_lines):
        y = top + r * cell_h + (cell_h - len(lines) * line_h) // 2
        _draw_lines(draw, lines, font, line_h, 0, y, left)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            canvas.paste(image.convert("RGB").resize((cell_w, cell_h), Image.NEAREST), (left + c * cell_w, top + r * cell_h))
    return canvas


def _fit(text: str, font, max_width: float, max_lines: int) -> list[str]:
    """`text` wrapped to `max_width`, at most `max_lines` lines; the last one ends in "…" when text was cut."""
    lines = _wrap(text, font, max_width)
    if len(lines) <= max_lines:
        return lines
    last = lines[max_lines - 1]
    while last and font.getlength(last.rstrip() + "…") > max_width:
        last = last[:-1]
    return lines[: max_lines - 1] + [last.rstrip() + "…"]


def _wrap(text: str, font, max_width: float) -> list[str]:
    """Greedy word wrap; a word longer than the line is cut into pieces."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > max_width and len(word) > 1:
                cut = max(1, int(len(word) * max_width / font.getlength(word)))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], font, line_h: int, x: int, y: int, width: int) -> None:
    for i, line in enumerate(lines):
        draw.text((x + (width - font.getlength(line)) / 2, y + i * line_h), line, fill="black", font=font)
