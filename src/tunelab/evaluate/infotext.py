"""A1111 "infotext": the generation settings in a PNG's `parameters` text chunk, which A1111's PNG Info tab, civitai
and ComfyUI read back. Layout:

    PROMPT (may span lines)
    Negative prompt: NEG (may span lines)
    Steps: 20, Sampler: Euler a, CFG scale: 6, Seed: 123, Size: 1024x1024, Model hash: abcdef1234, Model: name

A value containing `,` `:` or a newline is written as a JSON string, as A1111 does."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin

from tunelab.atomic import atomic_path
from tunelab.errors import fail
from tunelab.evaluate.samplers import sampler_name
from tunelab.models.model_path import resolve_model_path, weight_files

NEGATIVE_PREFIX = "Negative prompt:"
# `Key: value,` where value is a JSON string or runs to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/+]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass
class Infotext:
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "Euler a"
    cfg_scale: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    model_hash: str = ""
    model: str = ""
    clip_skip: int | None = None  # written only when > 1, as A1111 does
    extra: dict[str, str] = field(default_factory=dict)  # other `Key: value` pairs, kept in order

    def to_text(self) -> str:
        params = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "CFG scale": _number(self.cfg_scale),
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}",
        }
        if self.model_hash:
            params["Model hash"] = self.model_hash
        if self.model:
            params["Model"] = self.model
        if self.clip_skip and self.clip_skip > 1:
            params["Clip skip"] = self.clip_skip
        params.update(self.extra)
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"{NEGATIVE_PREFIX} {self.negative_prompt}")
        lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in params.items()))
        return "\n".join(lines)


def parse_infotext(text: str) -> Infotext:
    """Inverse of `Infotext.to_text`; also reads A1111's own output (unknown keys land in `extra`)."""
    *lines, last = text.rstrip("\n").split("\n")
    params = {key: _unquote(value) for key, value in _PARAM.findall(last)}
    if len(params) < 3:  # not a settings line: the whole text is prompt
        lines, params = [*lines, last], {}
    prompt_lines, negative_lines = [], None
    for line in lines:
        if negative_lines is None and line.startswith(NEGATIVE_PREFIX):
            negative_lines = [line[len(NEGATIVE_PREFIX) :].lstrip(" ")]
        elif negative_lines is None:
            prompt_lines.append(line)
        else:
            negative_lines.append(line)
    width, height = (int(v) for v in params.pop("Size", "512x512").split("x"))
    sampler = sampler_name(params.pop("Sampler", "Euler a"), params.pop("Schedule type", None))
    clip_skip = params.pop("Clip skip", None)
    return Infotext(
        prompt="\n".join(prompt_lines),
        negative_prompt="\n".join(negative_lines or []),
        steps=int(params.pop("Steps", 20)),
        sampler=sampler,
        cfg_scale=float(params.pop("CFG scale", 7.0)),
        seed=int(params.pop("Seed", 0)),
        width=width,
        height=height,
        model_hash=params.pop("Model hash", ""),
        model=params.pop("Model", ""),
        clip_skip=int(clip_skip) if clip_skip else None,
        extra=params,
    )


def save_png_with_infotext(image: Image.Image, path: str | Path, info: Infotext) -> None:
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", info.to_text())  # PIL writes iTXt when the text is not Latin-1
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=chunk)


def read_png_infotext(path: str | Path) -> Infotext:
    with Image.open(path) as image:
        text = image.info.get("parameters")
    if text is None:
        raise fail(path, "PNG has no 'parameters' text chunk (no infotext)")
    return parse_infotext(text)


def model_hash(path: str | Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's sha256. For a diffusers folder (no single
    file), the sha256 of its weight files' sha256s in path order. A trainer checkpoint hashes the model inside."""
    path = resolve_model_path(path)
    if path.is_file():
        return _sha256(path)[:10]
    files = weight_files(path)
    combined = "".join(f"{f.relative_to(path).as_posix()}:{_sha256(f)}\n" for f in files)
    return hashlib.sha256(combined.encode()).hexdigest()[:10]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:\n"') else value


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
