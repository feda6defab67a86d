"""The `tunelab` command line: one typer app; each command is a thin call into a stage module.

Errors from bad input (`TunelabError`) print one line `error: <file>: <problem>` and exit with code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tunelab import __version__
from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Fine-tune SDXL / SD1.5 models on tagged images and measure what each run learned and forgot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts mention TOML tables like [data.cache]: print brackets as written
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's outputs."),
    steps: int = typer.Option(300, help="Optimizer steps per finetune."),
    settings: str = typer.Option("te-off,te-on,te-only,te-on-sdxl-71",
                                 help="Settings to compare: te-off, te-on, te-only, te-on-sdxl-71."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Training seeds per setting (intervals then cover seed spread)."),
    samples: int = typer.Option(16, min=2, help="Judged samples per probe prompt (at least 2)."),
    quick: bool = typer.Option(False, help="A fast smoke run (few steps and samples): checks, not findings."),
) -> None:
    """Run the built-in toy world end to end: data → prepare → finetune per setting and seed → score → grid →
    findings."""
    from tunelab.demo import run_demo

    if quick:
        steps, samples = min(steps, 12), min(samples, 2)
    run_demo(out, settings=tuple(s.strip() for s in settings.split(",") if s.strip()), seeds=seeds, steps=steps,
             samples_per_prompt=samples, quick=quick)


@app.command()
def convert(
    model: Path = typer.Argument(..., help="Diffusers folder or single .safetensors file (SD1.5 / SDXL)."),
    out: Path = typer.Argument(..., help="Output: a folder (--to diffusers) or a .safetensors file (--to single-file)."),
    to: str = typer.Option(..., "--to", help="diffusers | single-file"),
    dtype: Optional[str] = typer.Option(None, help="fp32 | fp16 | bf16 (default: the input's stored dtype)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .ckpt/.pt/.bin pickles (weights only)."),
) -> None:
    """Convert a model between a diffusers folder and an A1111/ComfyUI single file."""
    from tunelab.models.convert import convert_model

    written = convert_model(model, out, to=to, dtype=dtype, allow_pickle=allow_pickle)
    typer.echo(f"wrote {written}")


@app.command()
def info(
    model: Path = typer.Argument(..., help="Diffusers folder or single .safetensors file."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .ckpt/.pt/.bin pickles (weights only)."),
) -> None:
    """Architecture, format, dtype, whether every tensor was found, and parameter count per component. An
    incomplete model is described, then reported as an error (exit 2)."""
    from tunelab.errors import fail
    from tunelab.models.info import model_info
    from tunelab.models.model_path import resolve_model_path

    path = resolve_model_path(model)
    described = model_info(path, allow_pickle=allow_pickle)
    typer.echo("\n".join(described.lines()))
    if not described.complete:
        raise fail(path, described.problem())


@app.command()
def sample(
    model: Path = typer.Argument(..., help="Diffusers folder or single .safetensors file."),
    prompt: list[str] = typer.Option([], help="A1111 syntax; repeat for several prompts; \"\" = unconditional (the default)."),
    negative_prompt: str = typer.Option("", help="Negative prompt (A1111 syntax)."),
    seed: int = typer.Option(0, help="First seed; images use seed, seed+1, … (--count per prompt)."),
    count: int = typer.Option(1, min=1, help="Images per prompt."),
    steps: int = typer.Option(20, min=1),
    cfg_scale: float = typer.Option(7.0),
    sampler: str = typer.Option("Euler a", help="A1111 sampler name, e.g. Euler, DDIM, \"DPM++ 2M Karras\"."),
    width: int = typer.Option(512),
    height: int = typer.Option(512),
    clip_skip: Optional[int] = typer.Option(None, min=1),
    batch_size: int = typer.Option(8, min=1),
    empty_as_zeros: bool = typer.Option(False, help="Encode the empty prompt as the zero embedding."),
    out: Path = typer.Option(Path("samples"), help="Output folder (PNG files with A1111 infotext)."),
) -> None:
    """Render images with one model (batched; each image is the same as rendered alone)."""
    from tunelab.evaluate.samplers import check_sampler
    from tunelab.evaluate.samples import sample_to_folder
    from tunelab.evaluate.sampling import SampleRequest

    base = SampleRequest(prompt="", seed=seed, negative_prompt=negative_prompt, steps=steps, cfg_scale=cfg_scale,
                         sampler=check_sampler(sampler), width=width, height=height, clip_skip=clip_skip)
    requests = [base.with_(prompt=p, seed=seed + i) for p in (prompt or [""]) for i in range(count)]
    files = sample_to_folder(model, requests, out, batch_size=batch_size, empty_prompt_as_zeros=empty_as_zeros)
    unconditional = "" if prompt else " (no --prompt: unconditional, empty prompt)"
    typer.echo(f"wrote {len(files)} image{'s' if len(files) != 1 else ''} to {out}{unconditional}")


@app.command()
def grid(config: Path = typer.Argument(..., help="GRID.toml: base settings and x / y / z axes.")) -> None:
    """Render an A1111-style X/Y/Z grid (axes: checkpoint, seed, prompt_sr, cfg_scale, steps, sampler, clip_skip)."""
    from tunelab.evaluate.grid import render_grid
    from tunelab.evaluate.grid_config import load_grid_config

    for path in render_grid(load_grid_config(config)):
        typer.echo(f"wrote {path}")


@app.command()
def merge(
    model_a: Path = typer.Argument(..., help="Model A (alpha 0): diffusers folder or single file."),
    model_b: Path = typer.Argument(..., help="Model B (alpha 1)."),
    out: Path = typer.Option(..., "--out", help="Output: NAME.safetensors (single file) or a folder (diffusers)."),
    alpha: float = typer.Option(0.5, help="Weighted sum (1 - alpha)·A + alpha·B for every component."),
    unet_alpha: Optional[float] = typer.Option(None, help="Alpha for the UNet (default: --alpha)."),
    text_encoder_alpha: Optional[float] = typer.Option(None, help="Alpha for the text encoders (default: --alpha)."),
    vae_alpha: Optional[float] = typer.Option(None, help="Alpha for the VAE (default: --alpha)."),
    dtype: Optional[str] = typer.Option(None, help="fp32 | fp16 | bf16 (default: A's stored dtype)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Load .ckpt/.pt/.bin pickles (weights only)."),
) -> None:
    """Merge two models by weighted sum (A1111's checkpoint merger), with per-component alphas."""
    from tunelab.evaluate.merge import MergeAlphas, merge_files

    alphas = MergeAlphas.from_options(alpha, unet=unet_alpha, text_encoders=text_encoder_alpha, vae=vae_alpha)
    typer.echo(f"wrote {merge_files(model_a, model_b, out, alphas, dtype=dtype, allow_pickle=allow_pickle)}")


@app.command()
def prepare(
    config: Path = typer.Argument(..., help="Run config TOML with a [data] table (sources, split, buckets, images)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    verify: bool = typer.Option(False, "--verify", help="Only check the caches' shards (size, digest, names); exit 1 if bad."),
) -> None:
    """Index the dataset (SQLite): check every image once, bucket it, split it; bad files are skipped with reasons."""
    from tunelab import disk_full
    from tunelab.data.config import load_data_config
    from tunelab.data.prepare import prepare_dataset, report_paths, require_train_items

    data_config = load_data_config(config)
    if verify:
        _verify_caches(data_config, repair=False)
        return
    with disk_full.index_writes(data_config.index):
        stats = prepare_dataset(data_config, progress=not quiet, config_file=config)
    typer.echo(stats.summary())
    typer.echo(f"index: {data_config.index}")
    typer.echo(f"skip report: {report_paths(data_config.index)[1]}")
    require_train_items(stats, data_config.index)  # nothing to train on: exit 2
    if data_config.cache.latents or data_config.cache.text_embeddings:  # [data.cache] asks for caches: build them
        from tunelab.data.cache_runner import build_caches

        with disk_full.cache_writes(data_config.cache.dir):
            typer.echo("\n".join(build_caches(config, progress=not quiet)))


@app.command()
def captions(
    config: Path = typer.Argument(..., help="Run config TOML with [data] (and [data.captions])."),
    preview: int = typer.Option(10, "--preview", min=0, help="How many items to show."),
    seed: int = typer.Option(0, help="Seed of the caption randomness."),
    epoch: int = typer.Option(0, help="Epoch (shuffle / dropout differ per epoch)."),
    split: str = typer.Option("train", help="train | validation"),
) -> None:
    """Print what the caption policy makes of the first items of the index (raw tags/caption → prompt, tokens)."""
    from tunelab.config import read_toml
    from tunelab.data.caption_preview import preview_lines
    from tunelab.data.config import load_data_config

    data_config = load_data_config(config)
    mode = str(read_toml(config).get("text_encoder", {}).get("mode", "off"))  # the cache is a question only if "off"
    typer.echo("\n".join(preview_lines(data_config, preview, seed=seed, epoch=epoch, split=split, text_encoder_mode=mode)))


def _verify_caches(data_config, *, repair: bool) -> None:
    from tunelab.data.cache_check import verify_lines

    lines, sound = verify_lines(data_config, repair=repair)
    typer.echo("\n".join(lines))
    if not sound:
        raise typer.Exit(1)


@app.command()
def cache(
    config: Path = typer.Argument(..., help="Run config TOML: [model], [data] with [data.cache], [train], [text_encoder]."),
    verify: bool = typer.Option(False, "--verify", help="Check the shards instead of building; exit 1 if bad."),
    repair: bool = typer.Option(False, "--repair", help="With --verify: drop bad shards so the next build redoes them."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Build (or resume) the latent and text-embedding caches [data.cache] asks for."""
    from tunelab import disk_full
    from tunelab.data.cache_runner import build_caches
    from tunelab.data.config import load_data_config

    data_config = load_data_config(config)
    if verify or repair:
        _verify_caches(data_config, repair=repair)
        return
    with disk_full.cache_writes(data_config.cache.dir):
        typer.echo("\n".join(build_caches(config, progress=not quiet)))


@app.command()
def validate(
    config: Path = typer.Argument(..., help="Run config TOML ([model] = the base, [validation], optional [data])."),
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="Checkpoint folder or model; repeat for several."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON results (default: <train.output_dir>/validation.json)."),
    no_base: bool = typer.Option(False, "--no-base", help="Leave out the base model's row."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Deterministic validation loss per timestep band (held-out, retention, folder sets) of each checkpoint."""
    from tunelab.validate.run import format_table, validate_checkpoints

    results = validate_checkpoints(config, checkpoint, output=out, include_base=not no_base, progress=not quiet)
    typer.echo(format_table(results))


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config TOML (tables model, data, train, text_encoder, unet, loss, optimizer, checkpoint, logging, validation)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print trainable parameters per block and the total %; train nothing."),
    resume: Optional[str] = typer.Option(None, "--resume", help="A checkpoint folder, or 'latest' in the run's output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run already in train.output_dir and start again."),
    shards: Optional[int] = typer.Option(None, "--shards", min=1, help="With --dry-run: memory per process of an FSDP run over N processes (default: the FSDP launch's)."),
) -> None:
    """Fine-tune a model: text encoders off / on / only, all or part of the UNet, exact resume, accelerate launch.
    A folder that already holds a run is refused unless --resume continues it or --overwrite replaces it."""
    from tunelab.train.checkpoint import remove_leftovers
    from tunelab.train.config import load_run_config, require_model_path
    from tunelab.train.memory_sharded import prints_for_the_launch
    from tunelab.train.recipe import dry_run as trainable_report
    from tunelab.train.recipe import run_training
    from tunelab.train.run_folder import check_run_folder

    if shards is not None and not dry_run:
        raise TunelabError("--shards goes with --dry-run: a run is sharded over the processes its launch starts")
    run_config = load_run_config(config)
    require_model_path(run_config, config)
    if dry_run:
        report = trainable_report(run_config, shards=shards)
        if prints_for_the_launch():
            typer.echo(report)
        return
    finished = check_run_folder(run_config, resume=resume, overwrite=overwrite)
    if finished:  # nothing to train; still clear what a kill during its last save or pruning left (the loop would)
        for line in remove_leftovers(run_config.train.output_dir):
            typer.echo(line, err=True)
        typer.echo(finished)
        return
    run_training(run_config, resume=resume)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="SWEEP.toml: base = RUN.toml, output_dir, [matrix] / [[variants]] overrides, optional [grid]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the variants, their overrides and trainable parameters; train nothing."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars for validation and the grid."),
) -> None:
    """Train a run config under several settings (finished variants skipped, interrupted ones resumed), then validate,
    grid and report them side by side: which setting was best, with numbers."""
    from tunelab.sweep.config import load_sweep
    from tunelab.sweep.runner import run_sweep
    from tunelab.sweep.summary import format_dry_run, format_summary

    planned = load_sweep(config)
    if dry_run:
        typer.echo(format_dry_run(planned))
        return
    result = run_sweep(planned, progress=not quiet)
    typer.echo("\n" + format_summary(result.record, result.validation))
    if result.scoreboard is not None:
        from tunelab.sweep.scoring import format_ranking

        score = planned.config.score
        typer.echo("\nwhich setting was best (scored with " + planned.config.score.probes.name + "):")
        typer.echo(format_ranking(result.scoreboard, score.retain_weight, score.contamination_max))
    typer.echo(f"sweep record: {result.record.path}" + (f"\nreport: {result.report}" if result.report else ""))


@app.command()
def score(
    probes: Path = typer.Argument(..., help="PROBES.toml: concepts, their prompts and roles, what the judge must see."),
    base: Path = typer.Option(..., "--base", help="The base model (any loadable form): the reference column."),
    checkpoint: list[str] = typer.Option([], "--checkpoint", help="PATH or NAME=PATH; repeat NAME for each training seed of one setting."),
    judge: Optional[str] = typer.Option(None, "--judge", help="toy | tagger | clip (default: the probes file's)."),
    judge_path: Optional[Path] = typer.Option(None, "--judge-path", help="The tagger's or CLIP model's folder."),
    out: Path = typer.Option(Path("runs/score"), "--out", help="Folder for scoreboard.json and the judged images."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per sampling call."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Score concepts on the base and each checkpoint with the same seeds: pass rates, change against the base and
    contamination, each with a 95 % interval, and a verdict per concept (learned / kept / forgotten / inconclusive)."""
    from tunelab.score.judges import judge_for
    from tunelab.score.probes import load_probes
    from tunelab.score.run import parse_checkpoint_arg, plan_runs, score_models
    from tunelab.score.table import format_scoreboard

    loaded = load_probes(probes)
    chosen = judge_for(loaded, judge, judge_path)
    runs = plan_runs(base, [parse_checkpoint_arg(c) for c in checkpoint])
    board = score_models(loaded, chosen, runs, out, batch_size=batch_size, progress=not quiet, log=typer.echo)
    typer.echo(format_scoreboard(board))
    typer.echo(f"wrote {out / 'scoreboard.json'}")


@app.command()
def findings(
    folder: Path = typer.Argument(Path("runs/demo"), help="A demo folder (or any folder whose score/ holds the toy settings te-off, te-on, te-only, te-on-sdxl-71)."),
) -> None:
    """Test the practitioner's statements (TE off / on / only, partial UNet, quality tags, unconditional) on the toy
    world's scored finetunes: effect with its 95 % interval, and holds / does not hold / inconclusive."""
    from tunelab.toy.findings import format_findings, write_findings

    source = folder / "score" if (folder / "score" / "scoreboard.json").is_file() else folder
    typer.echo(format_findings(write_findings(source, folder / "findings.json")))
    typer.echo(f"wrote {folder / 'findings.json'}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder: the demo's output, a training run, or a grid folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: RUN_DIR/report.html)."),
    trend_window: Optional[int] = typer.Option(None, "--trend-window", min=3, help="Fit loss trends over the latest N steps (default: the latest half)."),
) -> None:
    """One HTML page (opens from disk, offline): concept scoreboard, validation loss per band, training curves and
    loss trends, grids."""
    from tunelab.report.build import write_report

    typer.echo(f"wrote {write_report(run_dir, out, trend_window)}")


@app.command()
def watch(
    run_dirs: list[Path] = typer.Argument(..., help="Run, sweep or demo folders to watch (they may not exist yet)."),
    port: int = typer.Option(8710, "--port", min=0, max=65535, help="Port (0: any free one; the URL is printed)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    trend_window: Optional[int] = typer.Option(None, "--trend-window", min=3, help="Fit loss trends over the latest N steps (default: the latest half)."),
    refresh: float = typer.Option(3.0, "--refresh", min=0.5, help="Seconds between page updates."),
) -> None:
    """A live, read-only web page over run folders while they train: state, progress and ETA, curves and loss trends,
    latest samples, checkpoints, scoreboard and verdicts. Reads only the files the runs write."""
    from tunelab.watch.server import serve

    serve(run_dirs, host=host, port=port, trend_window=trend_window, refresh_s=refresh, log=typer.echo)


import_app = typer.Typer(help="Turn another trainer's settings into a tunelab run config.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("sd-scripts", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def import_sd_scripts_command(
    command: list[str] = typer.Argument(..., help="The sdxl_train.py command line (one quoted string, or after --), a file holding it, or its --config_file TOML."),
    out: Path = typer.Option(Path("run.toml"), "--out", help="Run config TOML to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Write a tunelab run config from an sd-scripts training command line; list every flag not mapped, and why."""
    from tunelab.migrate.sd_scripts_import import import_sd_scripts

    typer.echo("\n".join(import_sd_scripts(command, out, overwrite=overwrite).lines()))


toy_app = typer.Typer(help="The built-in toy world: tagged 32×32 images and a tiny SDXL base model.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("dataset")
def toy_dataset(
    out: Path = typer.Option(..., "--out", help="Folder for name.png + name.txt pairs (and toy_world.json)."),
    world: str = typer.Option("base", "--world", help="base | finetune | mix | retention | vae"),
    seed: int = typer.Option(0, "--seed"),
    count: Optional[int] = typer.Option(None, "--count", help="Images (default per world: base 2000, finetune 48, ...)."),
) -> None:
    """Write a toy world as a tagged image folder."""
    from tunelab.toy.world import write_dataset

    typer.echo(f"wrote {write_dataset(out, world, count=count, seed=seed)}")


@toy_app.command("base")
def toy_base(
    out: Path = typer.Option(..., "--out", help="Diffusers folder to write (fp16)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="UNet + text-encoder steps (default 2000)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(2, "--threads", help="CPU threads (torch.set_num_threads)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
) -> None:
    """Pretrain the toy base model from scratch: the VAE, then UNet + both text encoders."""
    import torch

    from tunelab.toy.base_recipe import ToyBaseConfig, build_toy_base, save_toy_base

    torch.set_num_threads(threads)
    config = ToyBaseConfig(seed=seed, device=device, **({"steps": steps} if steps else {}))
    components, record = build_toy_base(config, log=typer.echo)
    typer.echo(f"wrote {save_toy_base(components, record, out)}")


@toy_app.command("tagger")
def toy_tagger(
    out: Path = typer.Option(Path("toy_tagger"), "--out", help="Folder to write (model.onnx + selected_tags.csv)."),
    images: int = typer.Option(12000, "--images", help="Training images (drawn from the base, finetune and vae worlds)."),
    epochs: int = typer.Option(10, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(2, "--threads", help="CPU threads (torch.set_num_threads)."),
) -> None:
    """Train a small tagger on the toy world's tags and write it as a WD tagger folder (for `--judge tagger`)."""
    import torch

    from tunelab.toy.tagger import ToyTaggerConfig, build_toy_tagger

    torch.set_num_threads(threads)
    record = build_toy_tagger(out, ToyTaggerConfig(images=images, epochs=epochs, seed=seed))
    held_out = record["held_out"]
    typer.echo(f"trained in {record['train_seconds']:.0f} s; clean held-out images with every tag right: "
               f"{held_out['images_all_tags_right']:.1%}")
    typer.echo(f"wrote {out}")


@toy_app.command("score")
def toy_score(
    models: list[str] = typer.Argument(..., help="Checkpoints (any loadable form; PATH or NAME=PATH, a repeated NAME = another training seed); 'base' = the shipped toy base."),
    samples: int = typer.Option(16, "--samples", min=2, help="Samples per probe prompt (at least 2)."),
    out: Path = typer.Option(Path("runs/toy-score"), "--out", help="Folder for scoreboard.json (`tunelab report` reads it) and the judged images."),
    judge: str = typer.Option("toy", "--judge", help="toy (pixel rules) or tagger (a WD-layout folder, e.g. from `tunelab toy tagger`)."),
    judge_path: Optional[Path] = typer.Option(None, "--judge-path", help="The tagger's folder."),
    threads: int = typer.Option(2, "--threads", help="CPU threads (torch.set_num_threads)."),
) -> None:
    """`tunelab score` with the toy world's probes file: per concept the pass rate, change against the base and
    contamination, with intervals and verdicts."""
    import torch

    from tunelab.score.run import parse_checkpoint_arg
    from tunelab.score.table import format_scoreboard
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import score_toy_models

    torch.set_num_threads(threads)
    settings: dict[str, list[Path]] = {"base": [TOY_BASE_DIR]}
    for model in models:
        if model == "base":
            continue
        name, path = parse_checkpoint_arg(model)
        settings.setdefault(name, []).append(path)
    board = score_toy_models(settings, out, samples_per_prompt=samples, judge=judge, judge_path=judge_path,
                             progress=True, log=typer.echo)
    typer.echo(format_scoreboard(board))
    typer.echo(f"wrote {out / 'scoreboard.json'}")


def main() -> None:
    from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors its own click

    from tunelab import disk_full, signals

    try:
        with signals.graceful_stop():  # SIGINT / SIGTERM: train checkpoints and stops; other stages keep their work
            code = app(standalone_mode=False)  # usage errors come back here instead of printing usage + hint + error
    except NoArgsIsHelpError as e:  # `tunelab` or `tunelab toy` alone: the help, as before
        e.show()
        sys.exit(e.exit_code)
    except UsageError as e:  # a missing argument or a bad option value: one line, like every other refusal
        command = e.ctx.command_path if e.ctx else "tunelab"
        typer.echo(f"error: {e.format_message()} (see {command} --help)", err=True)
        sys.exit(2)
    except TunelabError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except signals.Interrupted as e:  # exit 130 (SIGINT) / 143 (SIGTERM)
        typer.echo(str(e), err=True)
        sys.exit(e.code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a full disk that no stage named more precisely: still one line
        if (error := disk_full.as_error(e)) is None:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
