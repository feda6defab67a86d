"""`tunelab import sd-scripts`: an sd-scripts `sdxl_train.py` run (flags, see `sd_scripts_flags.py`) → a tunelab run
config TOML, plus the list of every flag that could not be mapped and why (nothing is silently dropped).

Relative paths are read against the current folder (where sd-scripts would have run) and written absolute."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.atomic import write_text
from tunelab.data.kohya_dataset_config import KEYS as DATASET_KEYS
from tunelab.data.kohya_dataset_config import sd_scripts_buckets
from tunelab.errors import TunelabError
from tunelab.migrate.sd_scripts_args import ParsedArgs, parse_sd_scripts
from tunelab.migrate.sd_scripts_flags import FLAGS

SOURCE = "sd-scripts command line"
_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "pagedadamw8bit": "adamw8bit", "lion": "lion",
               "lion8bit": "lion", "pagedlion8bit": "lion", "adafactor": "adafactor"}  # fmt: skip
_SAVE_DTYPES = {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}
_CHUNKS = {None: 1, 75: 1, 150: 2, 225: 3}  # sd-scripts' max_token_length → 75-token chunks
_FLAG_NAMES_IN_DATASET_CONFIG = {"caption_extention": "caption_extension", "dataset_repeats": "num_repeats"}


@dataclass
class ImportReport:
    out: Path
    unmapped: dict[str, str] = field(default_factory=dict)  # "--flag value" → why
    notes: list[str] = field(default_factory=list)  # mapped, with a difference worth knowing

    def lines(self) -> list[str]:
        lines = [f"wrote {self.out}"]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"{len(self.unmapped)} flag{'s' if len(self.unmapped) != 1 else ''} not mapped"
                     + (":" if self.unmapped else ""))
        lines += [f"  {flag}: {why}" for flag, why in self.unmapped.items()]
        return lines


def import_sd_scripts(words: list[str], out: Path, *, overwrite: bool = False) -> ImportReport:
    out = Path(out)
    if out.exists() and not overwrite:
        raise TunelabError(f"{out}: already exists (use --overwrite to replace it)")
    parsed = parse_sd_scripts(words)
    report = ImportReport(out)
    config = _RunConfigBuilder(parsed, report).build()
    header = ["# Imported from sd-scripts by `tunelab import sd-scripts`."]
    header += [f"# not mapped: {flag}: {why}" for flag, why in report.unmapped.items()]
    write_text(out, "\n".join(header) + "\n\n" + toml_text(config))
    return report


class _RunConfigBuilder:
    def __init__(self, parsed: ParsedArgs, report: ImportReport):
        self.given, self.report = parsed.values, report
        for name, raw in parsed.unknown.items():
            report.unmapped[f"--{name} {raw}".strip()] = "not a flag of sdxl_train.py"
        if parsed.launcher:
            report.unmapped[" ".join(parsed.launcher)] = ("launcher options: give them to `accelerate launch -m "
                                                          "tunelab.cli train RUN.toml`")  # fmt: skip
        for name, value in self.given.items():
            flag = FLAGS[name]
            if flag.why and value != flag.default:
                self.unmapped(name, flag.why)

    def get(self, name: str):
        return self.given.get(name, FLAGS[name].default)

    def unmapped(self, name: str, why: str) -> None:
        value = self.given.get(name)
        shown = "" if value is True else " " + (" ".join(value) if isinstance(value, list) else str(value))
        self.report.unmapped[f"--{name}{shown}"] = why

    def build(self) -> dict:
        if not self.get("pretrained_model_name_or_path"):
            raise TunelabError(f"{SOURCE}: --pretrained_model_name_or_path is missing")
        model = {"path": _absolute(self.get("pretrained_model_name_or_path")),
                 "dtype": "bf16" if self.get("full_bf16") else "fp16" if self.get("full_fp16") else "fp32"}
        return {"model": model, "data": self.data(), "train": self.train(), "text_encoder": self.text_encoder(),
                "unet": self.unet(), "loss": self.loss(), "optimizer": self.optimizer(), "checkpoint": self.checkpoint(),
                "logging": {"tensorboard": True}}  # fmt: skip

    # --- [train] -------------------------------------------------------------------------------------------

    def train(self) -> dict:
        output = Path(_absolute(self.get("output_dir") or "output"))
        train: dict[str, Any] = {"output_dir": str(output / self.get("output_name") if self.get("output_name") else output),
                                 "batch_size": self.get("train_batch_size")}  # fmt: skip
        if self.get("max_train_epochs"):  # sd-scripts: epochs override max_train_steps
            train["epochs"] = self.get("max_train_epochs")
        else:
            train["max_steps"] = self.get("max_train_steps")
        if self.get("mixed_precision") not in ("no", "fp16", "bf16"):
            raise TunelabError(f"{SOURCE}: --mixed_precision {self.get('mixed_precision')!r}: expected no, fp16 or bf16")
        if self.get("max_token_length") not in _CHUNKS:
            raise TunelabError(f"{SOURCE}: --max_token_length {self.get('max_token_length')}: expected 75, 150 or 225")
        train.update(gradient_accumulation_steps=self.get("gradient_accumulation_steps"),
                     gradient_checkpointing=self.get("gradient_checkpointing"), mixed_precision=self.get("mixed_precision"),
                     max_grad_norm=self.get("max_grad_norm"), prior_loss_weight=self.get("prior_loss_weight"),
                     max_chunks=_CHUNKS[self.get("max_token_length")])  # fmt: skip
        if self.get("seed") is not None:
            train["seed"] = self.get("seed")
        else:
            self.report.notes.append("no --seed: sd-scripts draws a random seed, tunelab uses train.seed = 0")
        if self.get("clip_skip") is not None:
            train["clip_skip"] = self.get("clip_skip")
        return train

    # --- what trains ---------------------------------------------------------------------------------------

    def text_encoder(self) -> dict:
        on = bool(self.get("train_text_encoder"))
        section: dict[str, Any] = {"mode": "on" if on else "off", "learning_rate": self.get("learning_rate")}
        for name in ("learning_rate_te1", "learning_rate_te2"):
            if self.get(name) is None:
                continue
            if on:
                section[name] = self.get(name)
            else:
                self.unmapped(name, "sd-scripts ignores it without --train_text_encoder")
        return section

    def unet(self) -> dict:
        section: dict[str, Any] = {"learning_rate": self.get("learning_rate")}
        if self.get("block_lr"):
            try:
                section["block_lr"] = [float(v) for v in str(self.get("block_lr")).split(",")]
            except ValueError:
                raise TunelabError(f"{SOURCE}: --block_lr {self.get('block_lr')!r}: expected comma-separated numbers") from None
        return section

    # --- [optimizer] ---------------------------------------------------------------------------------------

    def optimizer(self) -> dict:
        name = "adamw8bit" if self.get("use_8bit_adam") else "lion" if self.get("use_lion_optimizer") else self.get("optimizer_type")
        kind = _OPTIMIZERS.get((name or "AdamW").lower())
        if kind is None:
            self.unmapped("optimizer_type", "not a tunelab optimizer (adamw, adamw8bit, adafactor, lion); AdamW written")
            kind = "adamw"
        elif (name or "").lower().startswith(("paged", "lion8bit")):
            self.report.notes.append(f"--optimizer_type {name}: written as {kind} (same update, 32-bit / unpaged states)")
        section: dict[str, Any] = {"type": kind}
        if kind in ("lion", "adafactor"):  # their libraries' defaults, not tunelab's AdamW-like ones
            section["weight_decay"] = 0.0
        if kind == "lion":
            section["betas"] = [0.9, 0.99]
        self._optimizer_args(kind, section)
        section.update(self._schedule())
        return section

    def _optimizer_args(self, kind: str, section: dict) -> None:
        pairs = {}
        for arg in self.get("optimizer_args") or []:
            key, _, raw = arg.partition("=")
            try:
                pairs[key.strip()] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                pairs[key.strip()] = raw.strip()
        if kind == "adafactor":  # tunelab's Adafactor: external learning rates, no parameter scaling
            for key, tunelab_value in (("relative_step", False), ("scale_parameter", False), ("warmup_init", False)):
                if pairs.pop(key, True if key != "warmup_init" else False) != tunelab_value:
                    self.report.unmapped[f"--optimizer_args {key}"] = (f"tunelab's Adafactor runs with {key}={tunelab_value} "
                                                                       "(sd-scripts' default differs)")  # fmt: skip
        for key, value in pairs.items():
            if key in ("weight_decay", "eps") and isinstance(value, (int, float)):
                section[key] = float(value)
            elif key == "betas" and isinstance(value, (list, tuple)) and len(value) == 2:
                section["betas"] = [float(v) for v in value]
            else:
                self.report.unmapped[f"--optimizer_args {key}={value}"] = f"tunelab's {kind} takes weight_decay, betas, eps"

    def _schedule(self) -> dict:
        name, cycles, power = self.get("lr_scheduler"), self.get("lr_scheduler_num_cycles"), self.get("lr_scheduler_power")
        schedule = {"constant": "constant", "constant_with_warmup": "constant", "linear": "linear", "cosine": "cosine",
                    "cosine_with_min_lr": "cosine"}.get(name)  # fmt: skip
        if name == "cosine_with_restarts":
            schedule = {1: "cosine", 3: "cosine_with_restarts"}.get(cycles)
        elif name == "polynomial":
            schedule = {1.0: "linear", 2.0: "polynomial"}.get(float(power))
        section: dict[str, Any] = {}
        if schedule is None:
            self.unmapped("lr_scheduler", f"tunelab has constant, linear, cosine, cosine_with_restarts (3 cycles) and "
                                          f"polynomial (power 2); this one ({name}, cycles {cycles}, power {power}) is not "
                                          "among them: constant written")  # fmt: skip
        else:
            section["lr_scheduler"] = schedule
        if self.get("lr_scheduler_min_lr_ratio") is not None:
            section["min_lr_ratio"] = self.get("lr_scheduler_min_lr_ratio")
        warmup = self.get("lr_warmup_steps")
        if isinstance(warmup, float):  # a fraction of the run
            if self.get("max_train_epochs"):
                self.unmapped("lr_warmup_steps", "a fraction of the run needs the step count: give steps, not epochs")
            else:
                section["warmup_steps"] = int(warmup * self.get("max_train_steps"))
        elif warmup:
            section["warmup_steps"] = warmup
        return section

    # --- [loss], [checkpoint] ------------------------------------------------------------------------------

    def loss(self) -> dict:
        loss: dict[str, Any] = {"type": self.get("loss_type"), "huber_schedule": self.get("huber_schedule"),
                                "huber_c": self.get("huber_c"), "zero_terminal_snr": self.get("zero_terminal_snr")}
        if self.get("v_parameterization"):
            loss["prediction_type"] = "v_prediction"
        for name in ("noise_offset", "min_snr_gamma", "min_timestep", "max_timestep"):
            if self.get(name) is not None:
                loss[name] = self.get(name)
        return loss

    def checkpoint(self) -> dict:
        section: dict[str, Any] = {"save_state": self.get("save_state")}
        every_steps, every_epochs = self.get("save_every_n_steps"), self.get("save_every_n_epochs")
        if every_steps:
            section["every_n_steps"] = every_steps
        if every_epochs:
            section["every_n_epochs"] = every_epochs
        kind = self.get("save_model_as")
        section["format"] = "diffusers" if kind in ("diffusers", "diffusers_safetensors") else "single-file"
        if kind == "ckpt":
            self.report.notes.append("--save_model_as ckpt: tunelab writes single files as .safetensors, never pickles")
        if self.get("save_precision") is not None:
            section["dtype"] = _SAVE_DTYPES[self.get("save_precision")]
        if self.get("save_last_n_steps") and every_steps:  # sd-scripts counts steps, tunelab checkpoints
            section["keep_last"] = max(1, self.get("save_last_n_steps") // every_steps)
        elif self.get("save_last_n_epochs") and every_epochs:
            section["keep_last"] = self.get("save_last_n_epochs")
        for name in ("save_last_n_steps", "save_last_n_epochs"):
            if self.get(name) and "keep_last" not in section:
                self.unmapped(name, "needs the matching --save_every_n_steps / --save_every_n_epochs")
        return section

    # --- [data] --------------------------------------------------------------------------------------------

    def data(self) -> dict:
        data: dict[str, Any] = {"index": "dataset_index.sqlite",
                                # sd-scripts takes captions as written: no tag normalisation
                                "captions": {"underscores": "keep", "parentheses": "keep", "deduplicate": False}}
        cache = {}
        if self.get("cache_latents") or self.get("cache_latents_to_disk"):
            cache["latents"] = True
        if self.get("cache_text_encoder_outputs") or self.get("cache_text_encoder_outputs_to_disk"):
            cache["text_embeddings"] = True
        if self.get("dataset_config"):
            for name in ("train_data_dir", "reg_data_dir", "in_json"):
                if self.get(name):
                    self.unmapped(name, "sd-scripts ignores it when --dataset_config is given")
            data["sources"] = [{"type": "kohya_dataset_config", "path": _absolute(self.get("dataset_config")),
                                "command_line": self._dataset_flags()}]  # fmt: skip
        else:
            data["sources"] = self._flag_sources()
            data["buckets"] = self._buckets().model_dump(mode="json")
        if cache:
            data["cache"] = cache
        return data

    def _dataset_flags(self) -> dict:
        """Given flags a dataset config falls back on (named as in the dataset config); refused ones are reported."""
        flags = {}
        for name, value in self.given.items():
            key = _FLAG_NAMES_IN_DATASET_CONFIG.get(name, name)
            if key in DATASET_KEYS and not DATASET_KEYS[key].refused and key != "batch_size":
                flags[key] = value
        return flags

    def _buckets(self):
        settings = {k: v for k, v in self._dataset_flags().items() if DATASET_KEYS[k].use == "buckets"}
        return sd_scripts_buckets(settings, SOURCE)

    def _caption_options(self) -> dict:
        options = {}
        for key, value in self._dataset_flags().items():
            if DATASET_KEYS[key].use == "caption" and key != "caption_separator":
                options[key] = value
        if self.get("caption_separator").strip() != ",":
            self.unmapped("caption_separator", "tunelab splits tags on ','")
        return options

    def _flag_sources(self) -> list[dict]:
        extension = "." + str(self.get("caption_extention") or self.get("caption_extension")).lstrip(".")
        common = {"tags_extension": extension, "caption_extension": "", "json_sidecar": False,  # "": no .caption file
                  "caption_options": self._caption_options(), "buckets": self._buckets().model_dump(mode="json")}
        if self.get("in_json"):
            if self.get("reg_data_dir"):
                self.unmapped("reg_data_dir", "sd-scripts ignores it with --in_json (fine-tuning datasets)")
            source = {"type": "kohya_metadata", "path": _absolute(self.get("in_json")), "repeats": self.get("dataset_repeats"),
                      "caption_options": common["caption_options"], "buckets": common["buckets"]}  # fmt: skip
            if self.get("train_data_dir"):
                source["image_dir"] = _absolute(self.get("train_data_dir"))
            return [source]
        if not self.get("train_data_dir"):
            raise TunelabError(f"{SOURCE}: no training data: give --train_data_dir, --in_json or --dataset_config")
        sources = [{"type": "folder", "path": _absolute(self.get("train_data_dir")), **common}]
        if self.get("reg_data_dir"):
            sources.append({"type": "folder", "path": _absolute(self.get("reg_data_dir")), "is_reg": True, **common})
        return sources


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def toml_text(config: dict) -> str:
    """TOML for a run config: top-level tables, their nested tables as [a.b], lists of tables inline."""
    out: list[str] = []

    def table(name: str, values: dict) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and v is not None}
        out.append(f"[{name}]")
        out.extend(f"{key} = {_toml_value(v)}" for key, v in scalars.items())
        out.append("")
        for key, v in values.items():
            if isinstance(v, dict):
                table(f"{name}.{key}", v)

    for name, values in config.items():
        table(name, values)
    return "\n".join(out)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"no TOML for {value!r}")
