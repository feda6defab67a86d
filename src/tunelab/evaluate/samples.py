"""Render requests with one checkpoint file and write each image as a PNG carrying A1111 infotext.

Shared by `tunelab sample` and `tunelab grid` (which calls it once per checkpoint, so each is loaded once)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tunelab.evaluate.infotext import Infotext, model_hash, save_png_with_infotext
from tunelab.evaluate.sampling import SampleRequest, SamplingEngine
from tunelab.models.io import model_label


@dataclass
class RenderedCheckpoint:
    name: str  # as A1111 shows it: file name without extension, or the folder's name
    model_hash: str  # A1111's short hash
    images: list[Image.Image]
    infotexts: list[Infotext]


def render_checkpoint(
    checkpoint: str | Path,
    requests: list[SampleRequest],
    files: list[Path],
    *,
    dtype: str | None = None,
    batch_size: int = 8,
    empty_prompt_as_zeros: bool = False,
    progress: bool = True,
) -> RenderedCheckpoint:
    """Load `checkpoint` (any format `load_model` reads; on the GPU when there is one), render `requests`, write
    image i to `files[i]`, free the model."""
    from tunelab.models.io import load_model

    model = load_model(checkpoint, dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    name, short_hash = model_label(checkpoint), model_hash(checkpoint)
    engine = SamplingEngine(model, batch_size=batch_size, empty_prompt_as_zeros=empty_prompt_as_zeros, progress=progress)
    images = engine.render(requests)
    infotexts = [request.infotext(model=name, model_hash=short_hash, empty_as_zeros=empty_prompt_as_zeros)
                 for request in requests]
    for image, info, file in zip(images, infotexts, files):
        save_png_with_infotext(image, file, info)
    del model, engine
    gc.collect()
    return RenderedCheckpoint(name, short_hash, images, infotexts)


def sample_to_folder(checkpoint: str | Path, requests: list[SampleRequest], out: str | Path, **options) -> list[Path]:
    """`tunelab sample`: images as OUT/0000-<seed>.png, … in request order."""
    files = [Path(out) / f"{i:04d}-{request.seed}.png" for i, request in enumerate(requests)]
    render_checkpoint(checkpoint, requests, files, **options)
    return files
