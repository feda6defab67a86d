"""The finetune recipe: compose the loop's parts from a `RunConfig` (model, trainable plan, optimizer, schedule,
accelerator, data, logging, samples), optionally restore a checkpoint, run `loop.train`.

`tunelab train CONFIG.toml` calls `run_training`; tests and benchmarks call it with their own components and batch
source.

Several processes: `accelerate launch --num_processes N -m tunelab.cli train CONFIG.toml` (or `torchrun`). On a
machine without CUDA, accelerate 1.x needs `--multi_gpu` for that (`--cpu` alone starts ONE process); the
Accelerator is then created with cpu=True and uses gloo. Each process reads its slice of every global batch."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.models.components import ModelComponents
from tunelab.train.batches import BatchSource
from tunelab.train.checkpoint import Progress, find_checkpoint, load_checkpoint
from tunelab.train.compile import CompileClock, compile_for_training
from tunelab.train.config import RunConfig
from tunelab.train.engines import refuse_unsupported_engine, without_accelerate_fsdp
from tunelab.train.fsdp import SHARDING_UNAWARE_OPTIMIZERS, FsdpSettings, ShardedParts, refuse_unsupported_with_fsdp
from tunelab.train.logs import TrainLogger
from tunelab.train.loop import TrainingRun, train
from tunelab.train.noise import training_scheduler
from tunelab.train.offload import OffloadedModules
from tunelab.train.optim import build_lr_scheduler, build_optimizer
from tunelab.train.parameters import format_dry_run, parameter_groups, plan_trainable
from tunelab.train.run_status import RunStatus, ended
from tunelab.train.samples import SampleRenderer


def load_components(config: RunConfig) -> ModelComponents:
    from tunelab.models.io import load_model

    return load_model(config.model.path, dtype=config.model.dtype)


def dry_run(config: RunConfig, components: ModelComponents | None = None, shards: int | None = None) -> str:
    """The trainable-parameter table of this config and its memory estimate; trains nothing. The model is read as
    structure only (meta device, checked complete from the files' headers): no weights, no model-sized memory.
    The estimate is per process of an FSDP run over `shards` processes (default: an FSDP launch's, else 1)."""
    from tunelab.models.io import load_model_structure
    from tunelab.train.memory_estimate import estimate_memory
    from tunelab.train.memory_sharded import requested_sharding

    components = components or load_model_structure(config.model.path)
    plan = plan_trainable(components, config)
    processes, settings = requested_sharding(shards)
    report = format_dry_run(plan) + "\n\n" + estimate_memory(components, plan, config, processes, settings).format()
    refused = SHARDING_UNAWARE_OPTIMIZERS.get(config.optimizer.type) if processes > 1 else None
    return report + (f"\n  optimizer.type {config.optimizer.type!r} is refused with FSDP: {refused}" if refused else "")


def make_accelerator(config: RunConfig):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if config.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise TunelabError("train.mixed_precision: fp16 needs a GPU; on CPU use \"bf16\" or \"no\"")
    refuse_unsupported_engine()  # DeepSpeed: refused with the reason (engines.py)
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and PartialState._shared_state.get("num_processes", 1) == 1:
        # Several runs in one single-process Python (tests, notebooks): accelerate's state is a process-wide
        # singleton that refuses a second run with other settings (e.g. mixed precision); start it afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
    # cpu=True on a machine without CUDA: then accelerate also recognises `torchrun` / `accelerate launch`
    # multi-process runs there (gloo) instead of silently training N independent single-process copies.
    with without_accelerate_fsdp():  # an FSDP request is carried out by train/fsdp.py, not by accelerate
        return Accelerator(mixed_precision=config.train.mixed_precision, cpu=not torch.cuda.is_available(),
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])


def total_steps(config: RunConfig, batches: BatchSource) -> int:
    if config.train.max_steps is not None:
        return config.train.max_steps
    return max(1, config.train.epochs * batches.batches_per_epoch() // config.train.gradient_accumulation_steps)


def frozen_text_encoders_unneeded(config: RunConfig, batches: BatchSource) -> bool:
    """Cached text embeddings + frozen encoders + no sampling: the encoders need not be in memory at all."""
    return (config.text_encoder.mode == "off" and getattr(batches, "has_text_embeddings", False)
            and not config.logging.sample_every_n_steps and config.validation is None)


def build_run(config: RunConfig, components: ModelComponents, batches: BatchSource,
              resume: str | Path | None = None) -> TrainingRun:
    torch.manual_seed(config.train.seed)
    plan = plan_trainable(components, config)
    plan.apply()
    accelerator = make_accelerator(config)
    if config.train.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        for name, part in plan.parts.items():
            if name.startswith("text_encoder") and part.trainable:
                enable = getattr(part.module, "activation_checkpointing_enable", None)  # transformers ≥ 5 name
                (enable or part.module.gradient_checkpointing_enable)()
    for module in components.named_parts().values():
        module.to(accelerator.device)
    validation = make_validator(config, components, accelerator, resuming=resume is not None)
    offloaded = None
    if frozen_text_encoders_unneeded(config, batches):
        offloaded = OffloadedModules({f"text_encoder_{i}": m for i, m in enumerate(components.text_encoders)},
                                     Path(config.train.output_dir) / f".offloaded-{accelerator.process_index}")
    sharding = shard_if_asked(config, plan, accelerator)  # FSDP: before the optimizer sees the parameters
    optimizer = build_optimizer(parameter_groups(plan), config.optimizer)
    steps = total_steps(config, batches)
    lr_scheduler = build_lr_scheduler(optimizer, config.optimizer, steps)  # stepped by us, once per step
    wrap = (lambda module: module) if sharding is not None else accelerator.prepare  # DDP, unless sharded
    unet = wrap(components.unet) if plan.trains_unet else components.unet
    text_encoders = [wrap(p.module) if p.trainable else p.module
                     for n, p in plan.parts.items() if n.startswith("text_encoder")]
    optimizer = accelerator.prepare(optimizer)
    compile_clock = None
    if config.train.compile:  # the training wrappers only; components keep the plain modules (train/compile.py)
        compile_clock = CompileClock(Path(config.train.output_dir) / "run.json" if accelerator.is_main_process else None)
        unet, text_encoders = compile_for_training(unet, text_encoders, [p.trainable for n, p in plan.parts.items()
                                                   if n.startswith("text_encoder")], config.train.compile_backend)
    ema = None
    if config.train.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(plan.parts["unet"].parameters(), decay=config.train.ema_decay)
    progress = Progress()
    if resume is not None:
        checkpoint = find_checkpoint(config.train.output_dir, resume)
        progress = load_checkpoint(accelerator, checkpoint, trained_parts=plan.trained_modules(), optimizer=optimizer,
                                   lr_scheduler=lr_scheduler, ema=ema, ema_parameters=plan.parts["unet"].parameters(),
                                   sharded=sharding is not None)
        if accelerator.is_main_process:
            print(f"resumed from {checkpoint} at step {progress.step}", file=sys.stderr)
    output = Path(config.train.output_dir)
    logger = TrainLogger(output / "tensorboard", config.logging, enabled=accelerator.is_main_process,
                         start_step=progress.step)
    samples = SampleRenderer(config, output / "samples", enabled=accelerator.is_main_process) \
        if config.logging.sample_every_n_steps and config.logging.sample_prompts else None
    return TrainingRun(config, accelerator, components, plan, unet, text_encoders, optimizer, lr_scheduler,
                       training_scheduler(components.scheduler, config.loss), batches, steps, progress, logger,
                       ema=ema, samples=samples, validation=validation, offloaded=offloaded,
                       compile_clock=compile_clock, sharding=sharding)


def shard_if_asked(config: RunConfig, plan, accelerator) -> ShardedParts | None:
    """The launch asked for FSDP: shard every trained module over the processes (train/fsdp.py)."""
    settings = FsdpSettings.from_launch()
    if settings is None:
        return None
    refuse_unsupported_with_fsdp(config)
    if accelerator.num_processes == 1:  # nothing to shard over: the run trains as any one-process run
        if accelerator.is_main_process:
            print("FSDP asked for with one process: training unsharded", file=sys.stderr)
        return None
    return ShardedParts({name: part.module for name, part in plan.parts.items() if part.trainable}, settings,
                        mixed_precision=config.train.mixed_precision)


def make_validator(config: RunConfig, components: ModelComponents, accelerator, *, resuming: bool):
    """The validation stage's hook (main process only), built before any step so the retention set comes from
    the base weights (on resume, from `[model] path`)."""
    if config.validation is None or not config.validation.enabled or not accelerator.is_main_process:
        return None
    from tunelab.validate.validator import Validator

    # Not resuming: `components` are still the base weights. Resuming: the Validator loads `[model] path`.
    return Validator(config, components, base=None if resuming else components,
                     progress=config.logging.progress_bar)


def launch_record(run: TrainingRun) -> dict:
    """How the run was launched: processes, engine and global batch (what a rerun needs beside the config)."""
    processes = run.accelerator.num_processes
    engine = "fsdp" if run.sharding is not None else "ddp" if processes > 1 else "one process"
    return {"processes": processes, "engine": engine,
            "global_batch": run.config.train.batch_size * processes * run.config.train.gradient_accumulation_steps,
            "fsdp": asdict(run.sharding.settings) if run.sharding is not None else None}


def write_run_record(config: RunConfig, path: Path, launch: dict | None = None) -> None:
    """The resolved config, library versions, seed and launch, next to the run's outputs."""
    import accelerate
    import diffusers
    import transformers

    import tunelab

    atomic.write_json(path, {
        "config": config.model_dump(mode="json"),
        "seed": config.train.seed,
        "launch": launch,
        "versions": {"tunelab": tunelab.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "python": platform.python_version()},
    })


def run_training(config: RunConfig, *, components: ModelComponents | None = None,
                 batches: BatchSource | None = None, resume: str | Path | None = None) -> TrainingRun:
    components = components or load_components(config)
    if batches is None:
        batches = data_batches(config)
    run = build_run(config, components, batches, resume)
    if run.accelerator.is_main_process:
        write_run_record(config, Path(config.train.output_dir) / "run.json", launch_record(run))
        writer = run.logger.writer
        run.status = RunStatus(config.train.output_dir, total_steps=run.total_steps, step=run.progress.step,
                               flush=writer.flush if writer is not None else None)
    error = None
    try:
        train(run)
    except BaseException as e:
        error = e
        raise
    finally:
        if run.offloaded is not None:
            run.offloaded.finish()
        if run.status is not None:  # status.json: finished, interrupted or failed, for `tunelab watch`
            run.status.end(*ended(error, run.progress.step, run.total_steps), step=run.progress.step)
    run.accelerator.wait_for_everyone()
    return run


def data_batches(config: RunConfig) -> BatchSource:
    """This process's share of the dataset (`[data]`), through the dataset loader."""
    from accelerate import PartialState

    from tunelab.data.cache_check import require_complete
    from tunelab.data.loader import open_batches

    if config.data is None:
        raise TunelabError("the run config has no [data] table")
    state = PartialState(cpu=not torch.cuda.is_available())  # the same process group the Accelerator will use
    # items missing from a cache: refused now, not at the first batch that holds one
    require_complete(config.data, text_encoder_mode=config.text_encoder.mode)
    return open_batches(config.data, batch_size=config.train.batch_size, seed=config.train.seed,
                        rank=state.process_index, world_size=state.num_processes,
                        text_encoder_mode=config.text_encoder.mode)

