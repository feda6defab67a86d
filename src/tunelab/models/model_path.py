"""What a model path given by the user points at: a diffusers folder or a single file as given, or a trainer
checkpoint folder (`RUN/checkpoints/step-N`, which holds the model in `model/` or `model.safetensors` next to its
training `state/`) resolved to the model inside. Every command that takes a model goes through `load_model`, which
calls `resolve_model_path` first, so a `step-N` folder works wherever a model does."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import fail

MODEL_INSIDE = ("model", "model.safetensors")  # what `tunelab.train.checkpoint.save_checkpoint` writes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")  # the files of a model folder that hold its weights


def weight_files(path: Path) -> list[Path]:
    """The files holding a (resolved) model's weights: the file itself, or a folder's weight files in path order."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def resolve_model_path(path: str | Path) -> Path:
    """`path` itself, or the model inside a trainer checkpoint folder. A folder that is neither a model nor a
    checkpoint is left for the loader to refuse, except two folders users pass by mistake, which get a one-line
    pointer to what they meant: a checkpoint whose model is missing, and a whole training run."""
    path = Path(path)
    if not path.is_dir() or (path / "model_index.json").is_file():
        return path
    for name in MODEL_INSIDE:
        inside = path / name
        if (inside / "model_index.json").is_file() or inside.is_file():
            return inside
    if (path / "state").is_dir() or path.name.startswith("step-"):
        raise fail(path, "trainer checkpoint folder without its model (no model/ folder or model.safetensors)")
    steps = sorted((path / "checkpoints").glob("step-*")) if (path / "checkpoints").is_dir() else []
    if steps:
        raise fail(path, f"is a training run, not a model; give one of its checkpoints, e.g. {steps[-1]}")
    return path
