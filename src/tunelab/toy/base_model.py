"""The toy base model shipped inside the package (built by `tunelab toy base`, stored as an fp16 diffusers folder)."""

from __future__ import annotations

from pathlib import Path

from tunelab.models.components import ModelComponents

TOY_BASE_DIR = Path(__file__).parent / "base"


def load_toy_base(dtype=None) -> ModelComponents:
    """Load the shipped toy base through the real model I/O (float32 unless `dtype` says otherwise)."""
    from tunelab.models.io import load_model

    return load_model(TOY_BASE_DIR, dtype=dtype)
