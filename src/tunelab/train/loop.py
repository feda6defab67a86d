"""The training loop, top to bottom. Everything it uses is built by `recipe.build_run` from the config; the loop
itself only runs optimizer steps and decides when to log, checkpoint, sample and validate.

One optimizer step = `gradient_accumulation_steps` micro-batches (gradients synchronised across processes only on
the last). Noise and timesteps depend only on (seed, micro-step, position in the global batch), so the same global
batch gives the same loss on 1 or N processes, and a resumed run continues exactly."""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass

import torch
from tqdm import tqdm

from tunelab import signals
from tunelab.models.components import ModelComponents
from tunelab.train.batches import BatchSource, micro_batches
from tunelab.train.checkpoint import (Progress, prune_checkpoints, remove_leftovers, save_checkpoint,
                                      writing_checkpoint)
from tunelab.train.config import RunConfig
from tunelab.train.engines import any_process
from tunelab.train.logs import TrainLogger
from tunelab.train.nonfinite import NonfiniteSteps, record_skipped
from tunelab.train.offload import OffloadedModules
from tunelab.train.objective import components_view, training_loss
from tunelab.train.parameters import TrainablePlan


@dataclass
class TrainingRun:
    config: RunConfig
    accelerator: object  # accelerate.Accelerator
    components: ModelComponents  # the plain modules: what is saved, sampled and validated
    plan: TrainablePlan
    unet: torch.nn.Module  # as called in training: DDP-wrapped when it trains
    text_encoders: list[torch.nn.Module]  # likewise
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    noise_scheduler: object  # diffusers DDPMScheduler: the forward process
    batches: BatchSource
    total_steps: int
    progress: Progress
    logger: TrainLogger
    ema: object | None = None  # diffusers EMAModel over the UNet's trained parameters
    samples: object | None = None  # recipe.SampleRenderer
    validation: object | None = None  # tunelab.validate.validator.Validator (main process only)
    offloaded: OffloadedModules | None = None  # frozen text encoders kept out of memory (cached embeddings)
    status: object | None = None  # train.run_status.RunStatus: status.json for `tunelab watch` (main process)
    compile_clock: object | None = None  # train.compile.CompileClock when train.compile is on
    sharding: object | None = None  # train.fsdp.ShardedParts when the launch asked for FSDP

    def whole_components(self) -> ModelComponents | None:
        """Collective when sharded: the components with whole weights on the main process (None on the others);
        sharded parts gathered into host memory (a checkpoint is written from there)."""
        if self.sharding is None:
            return self.components
        return self.sharding.gathered_components(self.components, self.accelerator.is_main_process)


@signals.deferring  # SIGINT / SIGTERM: finish the step, save, stop (stop_on_signal)
def train(run: TrainingRun) -> Progress:
    cfg, accelerator, progress = run.config, run.accelerator, run.progress
    if accelerator.is_main_process:
        for line in remove_leftovers(cfg.train.output_dir):
            tqdm.write(line, file=sys.stderr)
    nonfinite = NonfiniteSteps(cfg.train, run.total_steps, progress.nonfinite_skipped,
                               verbose=accelerator.is_main_process)
    position = progress.position
    stream = micro_batches(run.batches, position)
    conditioning_parts = components_view(run.components, run.text_encoders)
    accumulation = cfg.train.gradient_accumulation_steps
    wrapped = [m for m in (run.unet, *run.text_encoders) if m is not None and hasattr(m, "no_sync")]
    first_index = accelerator.process_index * cfg.train.batch_size  # this process's slice of the global batch
    images_per_step = cfg.train.batch_size * accelerator.num_processes * accumulation
    set_train_mode(run)
    bar = tqdm(total=run.total_steps, initial=progress.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (accelerator.is_main_process and cfg.logging.progress_bar))
    while progress.step < run.total_steps:
        if run.plan.text_encoder_stop_step is not None and progress.step >= run.plan.text_encoder_stop_step:
            run.plan.freeze_text_encoders()  # idempotent; from here on only the UNet trains
        train_text_encoders = run.plan.trains_text_encoders
        epoch_before = position.epoch

        # forward + backward over the micro-batches of this step
        losses, timesteps = [], []
        for micro in range(accumulation):
            batch = next(stream)
            last = micro == accumulation - 1
            with synchronised(accelerator, wrapped, last, run.sharding), accelerator.autocast():
                loss, t = training_loss(conditioning_parts, run.unet, batch, cfg, run.noise_scheduler,
                                        seed=cfg.train.seed, micro_step=progress.step * accumulation + micro,
                                        first_index=first_index, train_text_encoders=train_text_encoders)
                accelerator.backward(loss / accumulation)
            losses.append(loss.detach())
            timesteps.append(t)

        # gradient norm (clipped when max_grad_norm > 0), NaN/inf guard, update
        parameters = [p for group in run.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = clip_gradients(accelerator, parameters, cfg.train.max_grad_norm, run.optimizer) \
            if gradient_norm_needed(cfg, progress.step + 1) else None  # else one pass over the gradients saved
        loss = accelerator.reduce(torch.stack(losses).mean(), "mean").item()  # mean over the global batch
        finite = torch.isfinite(torch.tensor([loss, 0.0 if grad_norm is None else grad_norm])).all().item() \
            or inf_gradient_left_to_scaler(accelerator, loss)
        nonfinite.record(progress.step + 1, loss, grad_norm, finite)  # "stop", or "skip" past its limits: raises
        if finite:
            run.optimizer.step()
            if run.ema is not None:
                run.ema.step(run.plan.parts["unet"].parameters())
        clip_in_optimizer(run.optimizer, None)  # a clip left to the fused kernel applies to this step only
        with warnings.catch_warnings():
            if not finite:  # the schedule follows the step count, skipped steps too: torch's order warning is moot
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        progress.step, progress.epoch, progress.batch = progress.step + 1, position.epoch, position.batch
        progress.nonfinite_skipped = nonfinite.skipped

        run.logger.step(progress.step, loss=loss, grad_norm=grad_norm, images=images_per_step,
                        timesteps=torch.cat(timesteps), lrs={g["name"]: g["lr"] for g in run.optimizer.param_groups})
        if run.status is not None:
            run.status.step(progress.step, images_per_step)
        if not finite:
            run.logger.scalar("nonfinite_skipped_step", 1.0, progress.step)
        if run.compile_clock is not None:
            run.compile_clock.report(progress.step, run.logger, verbose=accelerator.is_main_process)
        bar.update(1)
        bar.set_postfix(loss=f"{run.logger.smoothed or float('nan'):.4f}", epoch=position.epoch, refresh=False)

        saved = checkpoint_due(cfg, progress.step, run.total_steps, position.epoch > epoch_before, position.epoch)
        whole = save(run) if saved else None  # the weights the model was written from (sharded: gathered once)
        sample = run.samples is not None and run.samples.due(progress.step)
        # Validation (tunelab.validate): at its own cadence and at every checkpoint (decided on the main process).
        validate = run.validation is not None and run.validation.due(progress.step, checkpoint=saved)
        wanted = sample or validate
        if run.sharding is not None:  # gathering the weights is collective: every process takes part
            wanted = any_process(accelerator, wanted)
        if wanted:
            whole = whole if saved and run.ema is None else run.whole_components()  # samples show the raw weights
            if run.sharding is not None and whole is not None:
                whole.to(accelerator.device)  # the gathered copy, sampled on the accelerator
            if sample:
                run.samples.render(whole, progress.step, run.logger)
            if validate:
                run.validation.run(whole, progress.step, run.logger)
        stop_on_signal(run, bar, saved)
    bar.close()
    if accelerator.is_main_process:
        record_skipped(cfg.train.output_dir / "run.json", progress.nonfinite_skipped)
    run.logger.close()
    if run.compile_clock is not None:
        run.compile_clock.close()
    return progress


def set_train_mode(run: TrainingRun) -> None:
    for name, part in run.plan.parts.items():
        part.module.train(bool(part.trainable))


@contextlib.contextmanager
def synchronised(accelerator, wrapped_modules, sync: bool, sharding=None):
    """Gradient all-reduce only on the last micro-batch of a step (DDP's no_sync on the others; FSDP's
    reduce-scatter likewise)."""
    if sharding is not None:
        sharding.set_gradient_sync(sync)
    with contextlib.ExitStack() as stack:
        if not sync:
            for module in wrapped_modules:
                stack.enter_context(accelerator.no_sync(module))
        yield


def clip_gradients(accelerator, parameters: list[torch.nn.Parameter], max_norm: float, optimizer=None) -> float:
    """Total gradient norm, after scaling the gradients down to `max_norm` when it is exceeded (0 = never).
    The gradients are only touched when clipping is needed (torch's clip_grad_norm_ always multiplies); with a
    fused optimizer the scaling is done by its kernel in the pass it makes anyway (`clip_in_optimizer`). Sharded
    (FSDP) gradients: torch's norm over DTensors is the norm of all shards."""
    if getattr(accelerator, "scaler", None) is not None:
        accelerator.unscale_gradients()  # fp16: the norm of the true gradients
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
    value = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded: the norm of all shards
    if max_norm and value > max_norm:
        scaler = getattr(accelerator, "scaler", None)  # fp16: the scaler owns the fused kernel's divisor
        if scaler is not None or not clip_in_optimizer(optimizer, (value + 1e-6) / max_norm):
            torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm, foreach=True)
    return value


def clip_in_optimizer(optimizer, divisor: float | None) -> bool:
    """Have a fused torch optimizer divide every gradient by `divisor` in its next step (its `grad_scale`, which
    the GradScaler uses to unscale fp16 gradients; None clears it). False when the optimizer cannot."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper → the torch optimizer
    if not (getattr(inner, "defaults", {}).get("fused") and hasattr(inner, "_step_supports_amp_scaling")):
        return False
    inner.grad_scale = None if divisor is None else torch.tensor(divisor)
    return True


def gradient_norm_needed(cfg: RunConfig, step: int) -> bool:
    """The norm costs a pass over every gradient. Without clipping it is measured only when logged, or when
    train.nonfinite = "skip" needs it to keep a NaN gradient out of the weights; with "stop", a NaN gradient on an
    unmeasured step shows as a NaN loss on the next step (and non-finite weights are never checkpointed)."""
    return (cfg.train.max_grad_norm > 0 or cfg.train.nonfinite == "skip" or step % cfg.logging.log_every_n_steps == 0
            or cfg.train.mixed_precision == "fp16")  # fp16: unscaling happens in clip_gradients


def inf_gradient_left_to_scaler(accelerator, loss: float) -> bool:
    """fp16: an inf gradient is the loss scaler's business (it skips the step and lowers the scale)."""
    return getattr(accelerator, "scaler", None) is not None and bool(torch.isfinite(torch.tensor(loss)))


def checkpoint_due(cfg: RunConfig, step: int, total_steps: int, epoch_ended: bool, epoch: int) -> bool:
    every_steps, every_epochs = cfg.checkpoint.every_n_steps, cfg.checkpoint.every_n_epochs
    return (step == total_steps or (every_steps > 0 and step % every_steps == 0)
            or (epoch_ended and every_epochs > 0 and epoch % every_epochs == 0))


def stop_on_signal(run: TrainingRun, bar, saved: bool) -> None:
    """After a whole optimizer step: on SIGINT / SIGTERM (on any process), checkpoint with training state and stop."""
    signum = signals.requested() or 0
    if run.accelerator.num_processes > 1:  # every process stops at the same step, or the collectives hang
        signum = int(run.accelerator.reduce(torch.tensor(signum, device=run.accelerator.device), "max"))
    if not signum:
        return
    if not (saved and run.config.checkpoint.save_state):
        save(run, save_state=True)
    bar.close()
    run.logger.close()
    raise signals.Interrupted(signum, f"interrupted at step {run.progress.step}; checkpoint saved; resume with "
                                      "--resume latest", step=run.progress.step)


def save(run: TrainingRun, *, save_state: bool | None = None) -> ModelComponents | None:
    """Model (with EMA weights when EMA is on) + training state (`checkpoint.save_state` unless told). Returns the
    components the model was written from (`TrainingRun.whole_components`)."""
    cfg = run.config
    # offloaded frozen parts are streamed from their files into the checkpoint, never loaded back (peak memory)
    frozen = run.offloaded.sources(run.components.named_parts()) if run.offloaded is not None else None
    whole = whole_for_export(run)
    with writing_checkpoint(cfg.train.output_dir, run.progress.step):  # a full disk: one line
        save_checkpoint(run.accelerator, cfg.train.output_dir, run.progress, model_components=whole,
                        trained_parts=run.plan.trained_modules(), optimizer=run.optimizer,
                        lr_scheduler=run.lr_scheduler, ema=run.ema, ema_parameters=run.plan.parts["unet"].parameters(),
                        model_format=cfg.checkpoint.format, model_dtype=cfg.checkpoint.dtype,
                        save_state=cfg.checkpoint.save_state if save_state is None else save_state, frozen=frozen,
                        sharded=run.sharding is not None)
    if run.accelerator.is_main_process:
        prune_checkpoints(cfg.train.output_dir, cfg.checkpoint.keep_last)
    return whole


def whole_for_export(run: TrainingRun) -> ModelComponents | None:
    """What the model export is written from. Sharded: gathered (collective), with the EMA weights when EMA is on
    (unsharded runs swap them in on the main process while writing: checkpoint.save_checkpoint)."""
    if run.sharding is None or run.ema is None:
        return run.whole_components()
    parameters = run.plan.parts["unet"].parameters()
    run.ema.store(parameters)
    run.ema.copy_to(parameters)  # every process its own shards
    try:
        return run.whole_components()
    finally:
        run.ema.restore(parameters)
