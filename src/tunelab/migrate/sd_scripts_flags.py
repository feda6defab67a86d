"""Every `sdxl_train.py` flag of kohya sd-scripts, as data: how it is parsed, its sd-scripts default, and the
tunelab run-config key it maps to, or why it is not mapped. `docs/SD_SCRIPTS.md` is this table.

A flag given at its sd-scripts default asks for nothing, so it is never reported. Facts (names, defaults, choices)
follow sd-scripts' `library/train_util.py`, `sdxl_train.py`, `library/sdxl_train_util.py`,
`library/custom_train_functions.py`, `library/deepspeed_utils.py` and `library/config_util.py`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SWITCH, VALUE, LIST = "switch", "value", "list"  # store_true / one value / nargs="*"


@dataclass(frozen=True)
class Flag:
    kind: str
    type: type | str = str  # int, float, str, or "int_or_float" (sd-scripts' lr_warmup_steps)
    default: Any = None
    key: str = ""  # the tunelab key it maps to ("" when unmapped)
    why: str = ""  # why it is not mapped (used when given at a non-default value)


def switch(key: str = "", why: str = "") -> Flag:
    return Flag(SWITCH, bool, False, key, why)


def value(type_: type | str, default: Any = None, key: str = "", why: str = "") -> Flag:
    return Flag(VALUE, type_, default, key, why)


_RUNTIME = "a speed or memory setting of sd-scripts; tunelab chooses its own"
_ATTENTION = "tunelab uses PyTorch's scaled-dot-product attention"
_HUB = "tunelab runs offline and uploads nothing"
_TRACKER = "tunelab logs to TensorBoard in the run folder"
_NOISE = "tunelab has no such noise variant (plain noise, optional noise_offset)"
_AUGMENT = "tunelab has no image augmentation"
_SAMPLES = "sd-scripts prompt files carry per-prompt options: copy the prompts into [logging] sample_prompts"
_DATA = "a dataset key (written to the data source)"

FLAGS: dict[str, Flag] = {
    # --- model ---
    "pretrained_model_name_or_path": value(str, None, "model.path"),
    "v2": switch(why="SD 2.x models are not supported (SDXL and SD1.5 are)"),
    "v_parameterization": switch("loss.prediction_type"),
    "vae": value(str, None, why="tunelab trains with the model's own VAE: bake a replacement VAE into the model first"),
    "no_half_vae": switch(why=_RUNTIME),
    "tokenizer_cache_dir": value(str, None, why="tunelab ships its tokenizers"),
    "fp8_base": switch(why="fp8 base weights are not supported"),
    "disable_mmap_load_safetensors": switch(why=_RUNTIME),
    "lowram": switch(why=_RUNTIME),
    "highvram": switch(why=_RUNTIME),
    # --- data ---
    "train_data_dir": value(str, None, "data.sources (folder, N_name repeat folders)"),
    "reg_data_dir": value(str, None, "data.sources (folder, is_reg = true)"),
    "in_json": value(str, None, "data.sources (kohya_metadata)"),
    "dataset_config": value(str, None, "data.sources (kohya_dataset_config)"),
    "dataset_repeats": value(int, 1, "data.sources repeats (in_json)"),
    "resolution": value(str, None, "data.buckets resolution"),
    "enable_bucket": switch("data.buckets enabled"),
    "min_bucket_reso": value(int, 256, "data.buckets min_side"),
    "max_bucket_reso": value(int, 1024, "data.buckets max_side"),
    "bucket_reso_steps": value(int, 64, "data.buckets step"),
    "bucket_no_upscale": switch("data.buckets upscale = false"),
    "caption_extension": value(str, ".caption", "data.sources tags_extension"),
    "caption_extention": value(str, None, "data.sources tags_extension"),  # sd-scripts' old misspelling
    "shuffle_caption": switch(_DATA),
    "caption_separator": value(str, ",", _DATA),
    "keep_tokens": value(int, 0, _DATA),
    "keep_tokens_separator": value(str, "", _DATA),
    "secondary_separator": value(str, None, _DATA),
    "enable_wildcard": switch(_DATA),
    "caption_prefix": value(str, None, _DATA),
    "caption_suffix": value(str, None, _DATA),
    "caption_dropout_rate": value(float, 0.0, _DATA),
    "caption_dropout_every_n_epochs": value(int, 0, _DATA),
    "caption_tag_dropout_rate": value(float, 0.0, _DATA),
    "cache_info": switch("(nothing: tunelab's index stores image sizes)"),
    "color_aug": switch(why=_AUGMENT),
    "flip_aug": switch(why=_AUGMENT),
    "random_crop": switch(why=_AUGMENT + "; crops are centred"),
    "face_crop_aug_range": value(str, None, why=_AUGMENT),
    "token_warmup_min": value(int, 1, why="tunelab has no caption token warm-up"),
    "token_warmup_step": value(float, 0.0, why="tunelab has no caption token warm-up"),
    "resize_interpolation": value(str, None, why="tunelab resizes with one fixed filter"),
    "alpha_mask": switch(why="tunelab has no masked loss"),
    "masked_loss": switch(why="tunelab has no masked loss"),
    "conditioning_data_dir": value(str, None, why="ControlNet training is not supported"),
    "dataset_class": value(str, None, why="custom dataset classes are sd-scripts code"),
    "debug_dataset": switch(why="use `tunelab captions --preview` to look at the data"),
    "max_token_length": value(int, None, "train.max_chunks"),
    "weighted_captions": switch(why="tunelab trains prompts as plain text; (word:1.2) weights are not applied"),
    "cache_latents": switch("data.cache.latents"),
    "cache_latents_to_disk": switch("data.cache.latents"),
    "skip_cache_check": switch(why=_RUNTIME),
    "vae_batch_size": value(int, 1, why=_RUNTIME),
    "cache_text_encoder_outputs": switch("data.cache.text_embeddings"),
    "cache_text_encoder_outputs_to_disk": switch("data.cache.text_embeddings"),
    "text_encoder_batch_size": value(int, None, why=_RUNTIME),
    "max_data_loader_n_workers": value(int, 8, why=_RUNTIME),
    "persistent_data_loader_workers": switch(why=_RUNTIME),
    # --- length, batch, precision ---
    "output_dir": value(str, None, "train.output_dir"),
    "output_name": value(str, None, "train.output_dir (a folder of that name)"),
    "max_train_steps": value(int, 1600, "train.max_steps"),
    "max_train_epochs": value(int, None, "train.epochs"),
    "train_batch_size": value(int, 1, "train.batch_size"),
    "gradient_accumulation_steps": value(int, 1, "train.gradient_accumulation_steps"),
    "gradient_checkpointing": switch("train.gradient_checkpointing"),
    "mixed_precision": value(str, "no", "train.mixed_precision"),
    "full_bf16": switch("model.dtype = \"bf16\""),
    "full_fp16": switch("model.dtype = \"fp16\""),
    "max_grad_norm": value(float, 1.0, "train.max_grad_norm"),
    "seed": value(int, None, "train.seed"),
    "clip_skip": value(int, None, "train.clip_skip"),
    "prior_loss_weight": value(float, 1.0, "train.prior_loss_weight"),
    # --- what trains, learning rates ---
    "learning_rate": value(float, 2e-6, "unet.learning_rate, text_encoder.learning_rate"),
    "train_text_encoder": switch("text_encoder.mode = \"on\""),
    "learning_rate_te1": value(float, None, "text_encoder.learning_rate_te1"),
    "learning_rate_te2": value(float, None, "text_encoder.learning_rate_te2"),
    "block_lr": value(str, None, "unet.block_lr"),
    # --- optimizer and schedule ---
    "optimizer_type": value(str, "", "optimizer.type"),
    "use_8bit_adam": switch("optimizer.type = \"adamw8bit\""),
    "use_lion_optimizer": switch("optimizer.type = \"lion\""),
    "optimizer_args": Flag(LIST, str, None, "optimizer.weight_decay / betas / eps"),
    "lr_scheduler": value(str, "constant", "optimizer.lr_scheduler"),
    "lr_warmup_steps": value("int_or_float", 0, "optimizer.warmup_steps"),
    "lr_scheduler_num_cycles": value(int, 1, "optimizer.lr_scheduler (cosine_with_restarts)"),
    "lr_scheduler_power": value(float, 1.0, "optimizer.lr_scheduler (polynomial)"),
    "lr_scheduler_min_lr_ratio": value(float, None, "optimizer.min_lr_ratio"),
    "lr_decay_steps": value("int_or_float", 0, why="tunelab's schedules decay over the whole run"),
    "lr_scheduler_timescale": value(int, None, why="tunelab has no inverse_sqrt schedule"),
    "lr_scheduler_type": value(str, "", why="custom scheduler classes are not supported"),
    "lr_scheduler_args": Flag(LIST, str, None, "", "custom scheduler arguments are not supported"),
    "fused_backward_pass": switch(why=_RUNTIME),
    "fused_optimizer_groups": value(int, None, why=_RUNTIME),
    # --- loss and noise ---
    "noise_offset": value(float, None, "loss.noise_offset"),
    "min_snr_gamma": value(float, None, "loss.min_snr_gamma"),
    "zero_terminal_snr": switch("loss.zero_terminal_snr"),
    "loss_type": value(str, "l2", "loss.type"),
    "huber_schedule": value(str, "snr", "loss.huber_schedule"),
    "huber_c": value(float, 0.1, "loss.huber_c"),
    "huber_scale": value(float, 1.0, why="tunelab's Huber loss has no scale"),
    "min_timestep": value(int, None, "loss.min_timestep"),
    "max_timestep": value(int, None, "loss.max_timestep"),
    "noise_offset_random_strength": switch(why=_NOISE),
    "multires_noise_iterations": value(int, None, why=_NOISE),
    "multires_noise_discount": value(float, 0.3, why=_NOISE),
    "ip_noise_gamma": value(float, None, why=_NOISE),
    "ip_noise_gamma_random_strength": switch(why=_NOISE),
    "adaptive_noise_scale": value(float, None, why=_NOISE),
    "scale_v_pred_loss_like_noise_pred": switch(why="tunelab has no v-prediction loss rescaling"),
    "v_pred_like_loss": value(float, None, why="tunelab has no v-prediction-like loss term"),
    "debiased_estimation_loss": switch(why="tunelab has no debiased-estimation weighting"),
    "weighting_scheme": value(str, "uniform", why="sd-scripts uses it for SD3 / FLUX, not for SDXL"),
    "logit_mean": value(float, 0.0, why="sd-scripts uses it for SD3 / FLUX, not for SDXL"),
    "logit_std": value(float, 1.0, why="sd-scripts uses it for SD3 / FLUX, not for SDXL"),
    "mode_scale": value(float, 1.29, why="sd-scripts uses it for SD3 / FLUX, not for SDXL"),
    # --- saving ---
    "save_every_n_steps": value(int, None, "checkpoint.every_n_steps"),
    "save_every_n_epochs": value(int, None, "checkpoint.every_n_epochs"),
    "save_precision": value(str, None, "checkpoint.dtype"),
    "save_model_as": value(str, None, "checkpoint.format"),
    "use_safetensors": switch("checkpoint.format"),
    "save_state": switch("checkpoint.save_state"),
    "save_last_n_steps": value(int, None, "checkpoint.keep_last"),
    "save_last_n_epochs": value(int, None, "checkpoint.keep_last"),
    "save_state_on_train_end": switch(why="tunelab saves state with every checkpoint when checkpoint.save_state is on"),
    "save_last_n_steps_state": value(int, None, why="tunelab keeps state with its checkpoints (checkpoint.keep_last)"),
    "save_last_n_epochs_state": value(int, None, why="tunelab keeps state with its checkpoints (checkpoint.keep_last)"),
    "save_n_epoch_ratio": value(int, None, why="set checkpoint.every_n_epochs"),
    "resume": value(str, None, why="sd-scripts state folders do not load into tunelab; `tunelab train --resume` resumes tunelab runs"),
    "output_config": switch(why="tunelab writes its resolved config into the run folder"),
    "config_file": value(str, None, "(read: its keys are flags)"),
    # --- samples and logging ---
    "sample_every_n_steps": value(int, None, why=_SAMPLES),
    "sample_every_n_epochs": value(int, None, why=_SAMPLES),
    "sample_at_first": switch(why=_SAMPLES),
    "sample_prompts": value(str, None, why=_SAMPLES),
    "sample_sampler": value(str, "ddim", why=_SAMPLES),
    "logging_dir": value(str, None, "logging.tensorboard"),
    "log_with": value(str, None, "logging.tensorboard"),
    "log_prefix": value(str, None, why=_TRACKER),
    "log_tracker_name": value(str, None, why=_TRACKER),
    "log_tracker_config": value(str, None, why=_TRACKER),
    "log_config": switch(why="tunelab writes its resolved config into the run folder"),
    "wandb_run_name": value(str, None, why=_TRACKER),
    "wandb_api_key": value(str, None, why=_TRACKER),
    # --- runtime, distributed, hub ---
    "mem_eff_attn": switch(why=_ATTENTION),
    "xformers": switch(why=_ATTENTION),
    "sdpa": switch(why=_ATTENTION),
    "diffusers_xformers": switch(why=_ATTENTION),
    "torch_compile": switch(why=_RUNTIME),
    "dynamo_backend": value(str, "inductor", why=_RUNTIME),
    "blocks_to_swap": value(int, None, why=_RUNTIME),
    "ddp_timeout": value(int, None, why=_RUNTIME),
    "ddp_gradient_as_bucket_view": switch(why=_RUNTIME),
    "ddp_static_graph": switch(why=_RUNTIME),
    "deepspeed": switch(why="DeepSpeed is not supported (use accelerate launch with DDP)"),
    "zero_stage": value(int, 2, why="DeepSpeed is not supported"),
    "offload_optimizer_device": value(str, None, why="DeepSpeed is not supported"),
    "offload_optimizer_nvme_path": value(str, None, why="DeepSpeed is not supported"),
    "offload_param_device": value(str, None, why="DeepSpeed is not supported"),
    "offload_param_nvme_path": value(str, None, why="DeepSpeed is not supported"),
    "zero3_init_flag": switch(why="DeepSpeed is not supported"),
    "zero3_save_16bit_model": switch(why="DeepSpeed is not supported"),
    "fp16_master_weights_and_gradients": switch(why="DeepSpeed is not supported"),
    "huggingface_repo_id": value(str, None, why=_HUB),
    "huggingface_repo_type": value(str, None, why=_HUB),
    "huggingface_path_in_repo": value(str, None, why=_HUB),
    "huggingface_token": value(str, None, why=_HUB),
    "huggingface_repo_visibility": value(str, None, why=_HUB),
    "save_state_to_huggingface": switch(why=_HUB),
    "resume_from_huggingface": switch(why=_HUB),
    "async_upload": switch(why=_HUB),
}  # fmt: skip


def flag_table_markdown() -> str:
    """The docs' table: flag, sd-scripts default, tunelab key or why not."""
    rows = ["| sd-scripts flag | default | tunelab |", "|---|---|---|"]
    for name, flag in FLAGS.items():
        default = "" if flag.kind == SWITCH or flag.default in (None, "") else f"`{flag.default}`"
        target = f"`{flag.key}`" if flag.key and not flag.key.startswith("(") else (flag.key or f"not mapped: {flag.why}")
        rows.append(f"| `--{name}` | {default} | {target} |")
    return "\n".join(rows)
