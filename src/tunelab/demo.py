"""`tunelab demo`: the whole pipeline on the built-in toy world, in a few minutes on a CPU.

1. writes the toy finetune world (character "kiko" with her eyes open, the unseen tag "zorb" = a purple star, the
   "inkwell" outline style, quality tags) as a folder of PNGs with booru-style `.txt` tags;
2. prepares it: SQLite index, aspect buckets, latent cache (the demo's captions change every epoch, so no
   text-embedding cache);
3. finetunes the shipped toy base once per setting and training seed (text encoders off / on / only, and on with
   the `sdxl-71` part of the UNet; tags shuffled and half of them dropped, subject tag kept), with the retention
   validation loss logged to TensorBoard during training;
4. measures every model against the base with `tunelab score`'s own code and the toy probes file: per concept the
   share of judged images showing what it should (targets: zorb, kiko; retain: known shapes, cars, mira,
   locations), its paired change against the base and the targets' contamination, each with a 95 % interval and a
   verdict; and the deterministic validation loss per timestep band on the retention set;
5. renders an XYZ grid, one checkpoint per column, with A1111 infotext in every cell;
6. tests the practitioner's statements (toy/findings.py) on those measurements: holds / does not hold /
   inconclusive, each with its effect and interval.

Every step writes the same files the CLI commands do (configs included), so each can be re-run on its own."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from tunelab import atomic
from tunelab.errors import TunelabError

RUN_TOML = """# written by tunelab (demo / bench); `tunelab train {name}.toml` re-runs this finetune
[model]
path = "{base}"

[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}{reg_source}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
cache = {{ dir = "cache-{mode}", latents = true, text_embeddings = {text_cache} }}
{captions}
[train]
output_dir = "run-{name}"
max_steps = {steps}
batch_size = {batch_size}
seed = {seed}
prior_loss_weight = {prior_loss_weight}

[text_encoder]
mode = "{mode}"
learning_rate = {te_lr}

[unet]
learning_rate = {lr}
preset = "{unet_preset}"

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
                 regularisation_folder: str | None = None, prior_loss_weight: float = 1.0,
                 name: str | None = None, seed: int = 0, unet_preset: str = "full") -> str:
    """The run config of a toy finetune (folder `images/` next to it); latents cached, text embeddings too when the
    text encoders are frozen and the captions the same every epoch; a [validation] table on the retention prompts
    when given. `learning_rate` is the UNet's, and the text encoders' too unless `text_encoder_learning_rate` is
    given. `captions`: the [data.captions] caption policy; {} trains on the captions as written.
    `regularisation_folder`: a second folder next to it whose images are regularisation images (is_reg), their
    loss weighted by `prior_loss_weight`. `name`: the run folder is run-<name> (default: the mode); `seed`: the
    training seed; `unet_preset`: which part of the UNet trains (train/parameters.py presets)."""
    from tunelab.data.caption_config import CaptionConfig

    te_lr = learning_rate if text_encoder_learning_rate is None else text_encoder_learning_rate
    fixed_captions = CaptionConfig(**captions).is_deterministic()
    text = RUN_TOML.format(base=base, mode=mode, name=name or mode, seed=seed, unet_preset=unet_preset, steps=steps,
                           batch_size=batch_size, lr=learning_rate, te_lr=te_lr,
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


@dataclass(frozen=True)
class ToySetting:
    """One finetune setting of the demo: text-encoder mode and which part of the UNet trains."""

    name: str
    mode: str
    unet_preset: str = "full"


# The settings the practitioner compared (DESIGN.md): text encoders off / on / only, and on with part of the UNet.
DEMO_SETTINGS = {s.name: s for s in (ToySetting("te-off", "off"), ToySetting("te-on", "on"),
                                      ToySetting("te-only", "only"), ToySetting("te-on-sdxl-71", "on", "sdxl-71"))}


def train_or_reuse(run, steps: int) -> Path:
    """Train one demo run (a RunConfig), or reuse it when its folder already holds this very run finished (a re-run
    of the demo into the same folder trains nothing again), or resume it when it was interrupted. A folder holding
    another run (other steps, learning rate, …) is replaced: the demo owns its folder. → the final checkpoint."""
    from tunelab.sweep.runner import config_conflict, resume_point
    from tunelab.train.recipe import run_training
    from tunelab.train.run_folder import check_run_folder

    output = Path(run.train.output_dir)
    final = output / "checkpoints" / f"step-{steps:06d}" / "model"
    conflict = config_conflict(run)
    if conflict:
        print(f"      replacing it: {conflict}")
        check_run_folder(run, resume=None, overwrite=True)
    elif final.is_dir():
        print(f"      already trained: {final.parent}")
        return final
    resume = None if conflict else resume_point(run)
    if resume is not None:
        print(f"      resuming from {resume.name}")
    run_training(run, resume="latest" if resume is not None else None)
    return final


def run_demo(out: Path, *, settings: tuple[str, ...] = tuple(DEMO_SETTINGS), seeds: int = 1, steps: int = 300,
             batch_size: int = 16, learning_rate: float = DEMO_LEARNING_RATE,
             text_encoder_learning_rate: float | None = None, images: int = 48, samples_per_prompt: int = 16,
             quick: bool = False) -> dict:
    """Every stage on the toy world; each setting trained once per training seed (0, 1, …)."""
    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset
    from tunelab.evaluate.grid import render_grid
    from tunelab.evaluate.grid_config import load_grid_config
    from tunelab.report.build import write_report
    from tunelab.score.table import format_scoreboard
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import retention_prompts, score_toy_models
    from tunelab.toy.findings import format_findings, write_findings
    from tunelab.toy.world import write_dataset
    from tunelab.train.config import load_run_config
    from tunelab.validate.run import format_table, validate_checkpoints

    unknown = [name for name in settings if name not in DEMO_SETTINGS]
    if unknown:
        raise TunelabError(f"unknown demo setting {unknown[0]!r} (known: {', '.join(DEMO_SETTINGS)})")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    started = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    print(f"[1/6] toy finetune world → {out / 'images'}")
    write_dataset(out / "images", "finetune", count=images, progress=False)
    lap("dataset")

    configs: dict[str, list[Path]] = {}
    for name in settings:
        setting = DEMO_SETTINGS[name]
        for seed in range(seeds):
            run_name = name if seeds == 1 else f"{name}-seed{seed}"
            config = out / f"{run_name}.toml"
            atomic.write_text(config, toy_run_toml(base=TOY_BASE_DIR, mode=setting.mode, name=run_name, seed=seed,
                                                   unet_preset=setting.unet_preset, steps=steps,
                                                   batch_size=batch_size, learning_rate=learning_rate,
                                                   text_encoder_learning_rate=text_encoder_learning_rate,
                                                   retention_prompts=retention_prompts(),
                                                   validation_samples=2 if quick else 4))
            configs.setdefault(name, []).append(config)

    print("[2/6] prepare: index, buckets, caches")
    for config in [c for paths in configs.values() for c in paths]:
        prepare_dataset(load_data_config(config), progress=False)
        build_caches(config, progress=False)
    lap("prepare")

    checkpoints: dict[str, list[Path]] = {}
    for name, paths in configs.items():
        setting = DEMO_SETTINGS[name]
        for seed, config in enumerate(paths):
            part = "" if setting.unet_preset == "full" else f", UNet preset {setting.unet_preset}"
            print(f"[3/6] finetune {name} (text encoders {setting.mode}{part}), training seed {seed}: {steps} steps, "
                  f"batch {batch_size}, lr {learning_rate:g}")
            checkpoints.setdefault(name, []).append(train_or_reuse(load_run_config(config), steps))
    lap("train")

    print(f"[4/6] measure: {samples_per_prompt} judged samples per probe prompt (same seeds for every model), "
          "retention validation loss")
    board = score_toy_models({"base": [TOY_BASE_DIR], **checkpoints}, out / "score",
                             samples_per_prompt=samples_per_prompt, log=lambda line: None)
    lap("score")
    first_seed = [paths[0] for paths in checkpoints.values()]
    validation = validate_checkpoints(configs[settings[0]][0], first_seed, output=out / "validation.json", progress=False)
    lap("validate")

    print("[5/6] XYZ grid: one checkpoint per column (training seed 0)")
    atomic.write_text(out / "grid.toml", GRID_TOML.format(checkpoints=_toml_list([TOY_BASE_DIR, *first_seed])))
    grid_files = render_grid(load_grid_config(out / "grid.toml"), progress=False)
    lap("grid")

    print("[6/6] findings: the practitioner's statements, tested")
    findings = write_findings(out / "score", out / "findings.json")
    lap("findings")
    timings["total"] = round(time.perf_counter() - started, 1)
    summary = {"settings": list(settings), "seeds": seeds, "steps": steps, "timings_s": timings,
               "grid": [str(p) for p in grid_files], "configs": {n: [str(c) for c in cs] for n, cs in configs.items()}}
    atomic.write_json(out / "demo.json", summary)
    print()
    print(format_scoreboard(board))
    print()
    print(format_table(validation))
    print()
    print(format_findings(findings))
    print(f"\ntimes (s): {json.dumps(timings)}")
    print(f"outputs: {out}  (score/scoreboard.json, findings.json, validation.json, grid/, run-*/tensorboard)")
    print(f"report: {write_report(out)}  (open it in a browser)")
    return {**summary, "scoreboard": board, "findings": findings, "validation": validation}


