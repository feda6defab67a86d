"""`tunelab validate CONFIG --checkpoint PATH...`: the validation loss of each checkpoint (and of the base model),
as a table on stdout and a JSON file. The same sets and draws as validation during training, so the numbers match
what TensorBoard showed at that step."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab import atomic
from tunelab.models.components import ModelComponents
from tunelab.models.io import model_label
from tunelab.train.config import RunConfig, load_run_config
from tunelab.validate.config import ValidationConfig
from tunelab.validate.loss import band_edges
from tunelab.validate.validator import Validator


def load_for_validation(path: Path, run_config: RunConfig, device: str) -> ModelComponents:
    from tunelab.models.io import load_model

    return load_model(path, dtype=run_config.model.dtype).to(device)


def validate_checkpoints(config_path: str | Path, checkpoints: list[Path], *, output: Path | None = None,
                         include_base: bool = True, device: str | None = None, progress: bool = True) -> dict:
    """{"config", "bands": [[low, high], ...], "skipped": {set: why}, "models": [{"name", "path", "scalars"}]};
    written atomically to `output` (default: <train.output_dir>/validation.json)."""
    run_config = load_run_config(config_path)
    config = run_config.validation or ValidationConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = load_for_validation(Path(run_config.model.path), run_config, device)
    validator = Validator(run_config, base, base=base, progress=progress)
    models = []
    if include_base:
        models.append({"name": "base", "path": str(run_config.model.path), "scalars": validator(base)})
    for checkpoint in checkpoints:
        del base  # one model in memory at a time (the validator keeps only latents)
        base = load_for_validation(Path(checkpoint), run_config, device)  # load_model resolves step-N folders
        models.append({"name": model_label(checkpoint), "path": str(checkpoint), "scalars": validator(base)})
    num_train_timesteps = base.scheduler.config.num_train_timesteps
    results = {"config": str(Path(config_path).resolve()), "seed": config.seed,
               "bands": [list(edge) for edge in band_edges(config.bands, num_train_timesteps)],
               "sets": {s.name: len(s.items) for s in validator.sets}, "skipped": validator.skipped, "models": models}
    atomic.write_json(output or Path(run_config.train.output_dir) / "validation.json", results)
    return results


def format_table(results: dict) -> str:
    """One block per set: a row per model, its mean and each band's mean (band 0 = least noise)."""
    bands = len(results["bands"])
    name_width = max([len(m["name"]) for m in results["models"]] + [5])
    header = f"{'model':<{name_width}}  {'mean':>7}  " + "  ".join(f"{f'b{k}':>7}" for k in range(bands))
    lines = []
    for set_name, count in results["sets"].items():
        lines += [f"val/{set_name} ({count} items × {bands} bands)", header]
        for model in results["models"]:
            s = model["scalars"]
            values = [s[f"val/{set_name}/mean"]] + [s[f"val/{set_name}/band_{k}"] for k in range(bands)]
            lines.append(f"{model['name']:<{name_width}}  " + "  ".join(f"{v:7.4f}" for v in values))
        lines.append("")
    lines += [f"skipped {name}: {why}" for name, why in results["skipped"].items()]
    return "\n".join(lines).rstrip()
