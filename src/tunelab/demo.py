"""`tunelab demo`: the whole pipeline on the built-in toy world, in a few minutes on a CPU.

1. writes the toy finetune world (character "kiko" with her eyes open, the unseen tag "zorb" = a purple star, the
   "inkwell" outline style, quality tags) as a folder of PNGs with booru-style `.txt` tags;
2. prepares it: SQLite index, aspect buckets, latent cache (the demo's captions change every epoch, so no
   text-embedding cache);
3. finetunes the shipped toy base once per text-encoder mode (default: off and on; tags shuffled and half of them
   dropped, subject tag kept), with the retention validation loss logged to TensorBoard during training;
4. measures every model against the base: per concept how often the judge sees what the prompt asked for
   (learned: zorb, kiko; kept: known shapes, cars, mira, locations), and the deterministic validation loss per
   timestep band on the retention set (what the base drew from the prompts that must survive);
5. renders an XYZ grid, one checkpoint per column, with A1111 infotext in every cell.

Every step writes the same files the CLI commands do (configs included), so each can be re-run on its own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from tunelab import atomic

RUN_TOML = """# written by tunelab (demo / bench); `tunelab train {mode}.toml` re-runs this finetune
[model]
path = "{base}"

[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}{reg_source}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
cache = {{ dir = "cache-{mode}", latents = true, text_embeddings = {text_cache} }}
{captions}
[train]
output_dir = "run-{mode}"
max_steps = {steps}
batch_size = {batch_size}
seed = 0
prior_loss_weight = {prior_loss_weight}

[text_encoder]
mode = "{mode}"
learning_rate = {te_lr}

[unet]
learning_rate = {lr}

[checkpoint]
every_n_epochs = 0
save_state = false

[logging]
progress_bar = true
histogram_every_n_steps = 50
"""

VALIDATION_TOML = """
[validation]
held_out = false
every_n_steps = {every}
retention_prompts = {prompts}
samples_per_prompt = {samples}
retention_steps = 12
cache_dir = "validation_cache"
"""


# The finetune's caption policy (sd-scripts options): the subject tag first and fixed, the other tags shuffled and
# each dropped half the time, as the toy base was trained. With every caption written in full every epoch, the
# finetune ties the new concept to the whole caption, and the prompt "zorb" alone never draws it (bench/toy_sweep.py).
TOY_FINETUNE_CAPTIONS = MappingProxyType({"shuffle_caption": True, "keep_tokens": 1, "caption_tag_dropout_rate": 0.5})


def toy_run_toml(*, base: Path, mode: str, steps: int, batch_size: int = 16, learning_rate: float = 1e-5,
                 text_encoder_learning_rate: float | None = None, captions: Mapping = TOY_FINETUNE_CAPTIONS,
                 retention_prompts: list[str] | None = None, validation_samples: int = 4,
                 regularisation_folder: str | None = None, prior_loss_weight: float = 1.0) -> str:
    """The run config of a toy finetune (folder `images/` next to it); latents cached, text embeddings too when the
    text encoders are frozen and the captions the same every epoch; a [validation] table on the retention prompts
    when given. `learning_rate` is the UNet's, and the text encoders' too unless `text_encoder_learning_rate` is
    given. `captions`: the [data.captions] caption policy; {} trains on the captions as written.
    `regularisation_folder`: a second folder next to it whose images are regularisation images (is_reg), their
    loss weighted by `prior_loss_weight`."""
    from tunelab.data.caption_config import CaptionConfig

    te_lr = learning_rate if text_encoder_learning_rate is None else text_encoder_learning_rate
    fixed_captions = CaptionConfig(**captions).is_deterministic()
    text = RUN_TOML.format(base=base, mode=mode, steps=steps, batch_size=batch_size, lr=learning_rate, te_lr=te_lr,
                           text_cache="true" if mode == "off" and fixed_captions else "false",
                           captions=f"captions = {_toml_table(captions)}\n" if captions else "",
                           reg_source=(f', {{ type = "folder", path = {json.dumps(regularisation_folder)}, is_reg = true }}'
                                       if regularisation_folder else ""),
                           prior_loss_weight=prior_loss_weight)
    if retention_prompts:
        text += VALIDATION_TOML.format(every=max(1, steps // 3), prompts=_toml_list(retention_prompts),
                                       samples=validation_samples)
    return text


GRID_TOML = """# written by `tunelab demo`; `tunelab grid grid.toml` re-renders it
prompt = "zorb"
steps = 12
cfg_scale = 4.0
sampler = "Euler"
width = 32
height = 32
batch_size = 32
empty_prompt_as_zeros = true
out = "grid"

[x]
axis = "checkpoint"
values = {checkpoints}

[y]
axis = "prompt_sr"
values = ["zorb", "kiko", "red, circle", "blue, car", "mira", ""]

[z]
axis = "seed"
values = [0]
"""


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(str(v)) for v in values) + "]"


def _toml_table(values: dict) -> str:
    """An inline TOML table of plain values (JSON spells bools, numbers and strings as TOML does)."""
    return "{ " + ", ".join(f"{key} = {json.dumps(value)}" for key, value in values.items()) + " }"


# UNet and text-encoder learning rate of the demo's finetunes. Measured on the shipped toy base (bench/toy_sweep.py,
# 300 steps, training seeds 0 and 100): at 1e-4 mode "on" draws "zorb" in 38-69 % of samples, "off" in 19-31 %, no
# more often than it draws the purple star for no prompt at all (22-44 %). At 2e-5 and 5e-5 "on" reached ~40 % with
# seed 0 but under 10 % with seed 100; at 1e-5 ~20 %.
DEMO_LEARNING_RATE = 1e-4


def run_demo(out: Path, *, modes: tuple[str, ...] = ("off", "on"), steps: int = 300, batch_size: int = 16,
             learning_rate: float = DEMO_LEARNING_RATE, text_encoder_learning_rate: float | None = None,
             images: int = 48, samples_per_prompt: int = 16, quick: bool = False) -> dict:
    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.evaluate.grid import render_grid
    from tunelab.evaluate.grid_config import load_grid_config
    from tunelab.models.io import load_model
    from tunelab.report.build import write_report
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import EvalSettings, evaluate_model, evaluation_prompts
    from tunelab.toy.world import write_dataset
    from tunelab.train.config import load_run_config
    from tunelab.train.recipe import run_training
    from tunelab.validate.run import format_table, validate_checkpoints

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    print(f"[1/5] toy finetune world → {out / 'images'}")
    write_dataset(out / "images", "finetune", count=images, progress=False)
    lap("dataset")

    retention_prompts = [p.prompt for p in evaluation_prompts() if p.group == "retention"]
    configs = {}
    for mode in modes:
        config = out / f"{mode}.toml"
        atomic.write_text(config, toy_run_toml(base=TOY_BASE_DIR, mode=mode, steps=steps, batch_size=batch_size,
                                               learning_rate=learning_rate,
                                               text_encoder_learning_rate=text_encoder_learning_rate,
                                               retention_prompts=retention_prompts,
                                               validation_samples=2 if quick else 4))
        configs[mode] = config

    print("[2/5] prepare: index, buckets, caches")
    for mode, config in configs.items():
        prepare_dataset(load_data_config(config), progress=False)
        build_caches(config, progress=False)
    lap("prepare")

    checkpoints = {}
    for mode, config in configs.items():
        te_lr = "" if mode == "off" or text_encoder_learning_rate is None \
            else f", text encoders {text_encoder_learning_rate:g}"
        print(f"[3/5] finetune, text encoders {mode}: {steps} steps, batch {batch_size}, lr {learning_rate:g}{te_lr}")
        started = time.perf_counter()
        run_training(load_run_config(config))
        timings[f"train_{mode}"] = round(time.perf_counter() - started, 1)
        checkpoints[mode] = out / f"run-{mode}" / "checkpoints" / f"step-{steps:06d}" / "model"
    clock = time.perf_counter()

    print("[4/5] measure: concepts learned / kept (judged samples) and retention validation loss")
    settings = EvalSettings(samples_per_prompt=samples_per_prompt)
    models = {"base": TOY_BASE_DIR, **{f"te-{m}": p for m, p in checkpoints.items()}}
    scores = {name: evaluate_model(load_model(path), settings) for name, path in models.items()}
    validation = validate_checkpoints(next(iter(configs.values())), list(checkpoints.values()),
                                      output=out / "validation.json", progress=False)
    lap("measure")

    print("[5/5] XYZ grid: one checkpoint per column")
    atomic.write_text(out / "grid.toml", GRID_TOML.format(checkpoints=_toml_list(models.values())))
    grid_files = render_grid(load_grid_config(out / "grid.toml"), progress=False)
    lap("grid")

    report = {"scores": scores, "validation": validation, "timings_s": timings,
              "grid": [str(p) for p in grid_files], "configs": {m: str(c) for m, c in configs.items()}}
    atomic.write_json(out / "scoreboard.json", report)
    print()
    print(format_scoreboard(scores))
    print()
    print(format_table(validation))
    print(f"\ntimes (s): {json.dumps(timings)}")
    print(f"outputs: {out}  (scoreboard.json, validation.json, grid/, run-*/tensorboard)")
    print(f"report: {write_report(out)}  (open it in a browser)")
    return report


def format_scoreboard(scores: dict) -> str:
    """Rows: groups then concepts; columns: models. Each value: share of samples the judge found correct."""
    models = list(scores)
    first = scores[models[0]]
    rows = [(f"[{g}]", {m: scores[m]["per_group"][g] for m in models}) for g in first["per_group"]]
    rows += [(c, {m: scores[m]["per_concept"][c] for m in models}) for c in first["per_concept"]]
    rows += [(f"{c} with no prompt (chance)", {m: scores[m]["unconditional_chance"][c] for m in models})
             for c in first["unconditional_chance"]]
    rows += [(f"other prompts drawn as {c}", {m: scores[m]["leakage"][c] for m in models}) for c in first["leakage"]]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'correct share':<{width}}  " + "  ".join(f"{m:>8}" for m in models)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{values[m]:8.0%}" for m in models) for name, values in rows]
    return "\n".join(lines)
