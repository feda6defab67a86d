"""`tunelab import sd-scripts`: three realistic sdxl_train.py runs become run configs that pass `--dry-run`, and
every flag that could not be mapped is listed with its reason."""

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunelab import cli
from tunelab.data.config import load_data_config
from tunelab.data.sources import iter_candidates
from tunelab.errors import TunelabError
from tunelab.migrate.sd_scripts_flags import FLAGS, flag_table_markdown
from tunelab.migrate.sd_scripts_import import import_sd_scripts
from tunelab.toy.base_model import TOY_BASE_DIR
from tunelab.train.config import load_run_config
from tunelab.train.recipe import dry_run

def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


BLOCK_LR = ",".join(["0"] + ["1e-6"] * 21 + ["0"])  # 23 SDXL blocks: embeddings and out frozen


@pytest.fixture(scope="module")
def toy_base():
    from tunelab.models.io import load_model

    return load_model(TOY_BASE_DIR)


def _import_via_cli(monkeypatch, capsys, *words) -> list[str]:
    monkeypatch.setattr(sys, "argv", ["tunelab", "import", "sd-scripts", *words])
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    captured = capsys.readouterr()
    assert exit_code.value.code == 0, captured.err
    return captured.out.splitlines()


def test_full_finetune_with_text_encoders_and_block_lr(tmp_path, monkeypatch, capsys, toy_base):
    monkeypatch.chdir(tmp_path)
    command = (f"accelerate launch --num_processes 1 sdxl_train.py --pretrained_model_name_or_path={TOY_BASE_DIR} "
               "--train_data_dir img --reg_data_dir reg --resolution 1024,1024 --enable_bucket --min_bucket_reso 512 "
               "--max_bucket_reso 2048 --output_dir out --output_name ft --train_batch_size 4 --max_train_steps 1000 "
               f"--learning_rate 5e-6 --train_text_encoder --learning_rate_te1 1e-6 --learning_rate_te2 0 --block_lr {BLOCK_LR} "
               "--optimizer_type AdamW8bit --optimizer_args weight_decay=0.05 'betas=(0.9,0.99)' --lr_scheduler "
               "cosine_with_restarts --lr_scheduler_num_cycles 1 --lr_warmup_steps 0.05 --mixed_precision bf16 --full_bf16 "
               "--gradient_checkpointing --noise_offset 0.0357 --min_snr_gamma 5 --shuffle_caption --keep_tokens 1 "
               "--caption_extension .txt --xformers --cache_latents --save_every_n_steps 200 --save_last_n_steps 600 "
               "--save_model_as safetensors --save_precision fp16 --seed 42 --max_token_length 225 --sample_prompts p.txt "
               "--flip_aug --multires_noise_iterations 6 --frobnicate 3")  # fmt: skip
    lines = _import_via_cli(monkeypatch, capsys, "--out", "run.toml", command)
    unmapped = {line.split(":")[0].strip() for line in lines if line.startswith("  ")}
    assert unmapped == {"accelerate launch --num_processes 1", "--xformers", "--sample_prompts p.txt", "--flip_aug",
                        "--multires_noise_iterations 6", "--frobnicate 3"}  # fmt: skip
    assert "6 flags not mapped:" in lines
    written = tomllib.loads((tmp_path / "run.toml").read_text())
    assert written["model"] == {"path": str(TOY_BASE_DIR), "dtype": "bf16"}
    assert written["text_encoder"] == {"mode": "on", "learning_rate": 5e-6, "learning_rate_te1": 1e-6, "learning_rate_te2": 0.0}
    assert written["unet"]["block_lr"] == [float(v) for v in BLOCK_LR.split(",")]
    assert written["optimizer"] == {"type": "adamw8bit", "weight_decay": 0.05, "betas": [0.9, 0.99], "lr_scheduler": "cosine",
                                    "warmup_steps": 50}  # fmt: skip
    train = written["train"]
    assert (train["output_dir"], train["batch_size"], train["max_steps"], train["seed"]) == (str(tmp_path / "out/ft"), 4, 1000, 42)
    assert (train["mixed_precision"], train["gradient_checkpointing"], train["max_chunks"]) == ("bf16", True, 3)
    assert written["checkpoint"] == {"save_state": False, "every_n_steps": 200, "format": "single-file", "dtype": "fp16",
                                     "keep_last": 3}  # fmt: skip
    assert (written["loss"]["noise_offset"], written["loss"]["min_snr_gamma"]) == (0.0357, 5.0)
    img, reg = written["data"]["sources"]
    assert (img["path"], reg["path"], reg["is_reg"], img["tags_extension"]) == (str(tmp_path / "img"), str(tmp_path / "reg"), True, ".txt")
    assert img["caption_options"] == {"shuffle_caption": True, "keep_tokens": 1}
    config = load_run_config(tmp_path / "run.toml")
    assert config.data.sources[0].buckets == config.data.buckets and config.data.buckets.min_side == 512
    assert "total" in dry_run(config, toy_base)


def test_text_encoders_off_with_cached_outputs_from_a_script_file(tmp_path, monkeypatch, toy_base):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "ft" / "a.png", 96, 64)
    (tmp_path / "ft" / "meta_lat.json").write_text(json.dumps({"a": {"tags": "1girl, solo"}}))
    (tmp_path / "train.sh").write_text(f"""#!/bin/sh
# TE frozen, text-encoder outputs cached
accelerate launch sdxl_train.py \\
  --pretrained_model_name_or_path "{TOY_BASE_DIR}" \\
  --in_json ft/meta_lat.json --train_data_dir ft --dataset_repeats 2 \\
  --resolution 64 --enable_bucket --min_bucket_reso 32 --max_bucket_reso 128 --bucket_reso_steps 16 \\
  --cache_text_encoder_outputs --cache_latents_to_disk --learning_rate 1e-5 --learning_rate_te1 1e-6 \\
  --optimizer_type Adafactor --optimizer_args scale_parameter=False relative_step=False warmup_init=False \\
  --lr_scheduler constant_with_warmup --lr_warmup_steps 100 --max_train_epochs 3 --train_batch_size 1 \\
  --loss_type huber --huber_schedule constant --huber_c 0.2 --v_parameterization --zero_terminal_snr \\
  --mixed_precision bf16 --sdpa --save_every_n_epochs 1
""")
    report = import_sd_scripts([str(tmp_path / "train.sh")], tmp_path / "run.toml")
    assert report.unmapped == {"accelerate launch": report.unmapped["accelerate launch"],
                               "--learning_rate_te1 1e-06": "sd-scripts ignores it without --train_text_encoder",
                               "--sdpa": "tunelab uses PyTorch's scaled-dot-product attention"}  # fmt: skip
    written = tomllib.loads((tmp_path / "run.toml").read_text())
    assert written["text_encoder"]["mode"] == "off" and written["data"]["cache"] == {"latents": True, "text_embeddings": True}
    assert written["optimizer"] == {"type": "adafactor", "weight_decay": 0.0, "lr_scheduler": "constant", "warmup_steps": 100}
    assert written["loss"] == {"type": "huber", "huber_schedule": "constant", "huber_c": 0.2, "zero_terminal_snr": True,
                               "prediction_type": "v_prediction"}  # fmt: skip
    assert written["train"]["epochs"] == 3 and "max_steps" not in written["train"]
    assert written["checkpoint"]["every_n_epochs"] == 1
    (source,) = written["data"]["sources"]
    assert (source["type"], source["path"], source["image_dir"], source["repeats"]) == (
        "kohya_metadata", str(tmp_path / "ft/meta_lat.json"), str(tmp_path / "ft"), 2)
    (candidate,) = iter_candidates(load_data_config(tmp_path / "run.toml").sources)
    assert candidate.buckets.min_side == 32 and candidate.text.tags == "1girl, solo"
    assert "total" in dry_run(load_run_config(tmp_path / "run.toml"), toy_base)


def test_config_file_toml_with_a_dataset_config(tmp_path, monkeypatch, capsys, toy_base):
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "img" / "a.png", 64, 64)
    (tmp_path / "dataset.toml").write_text('[general]\nenable_bucket = true\nbatch_size = 2\n'
                                           '[[datasets]]\n  [[datasets.subsets]]\n  image_dir = "img"\n  num_repeats = 3\n')
    (tmp_path / "config.toml").write_text(f"""
[model_arguments]
pretrained_model_name_or_path = "{TOY_BASE_DIR}"
[dataset_arguments]
dataset_config = "dataset.toml"
resolution = "64,64"
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 16
shuffle_caption = true
caption_extension = ".txt"
[training_arguments]
output_dir = "out"
train_batch_size = 2
max_train_steps = 500
learning_rate = 1e-6
lr_scheduler = "polynomial"
lr_scheduler_power = 3.0
mixed_precision = "bf16"
lowram = true
[saving_arguments]
save_model_as = "diffusers"
""")
    lines = _import_via_cli(monkeypatch, capsys, "--out", "run.toml", "--", "sdxl_train.py", "--config_file", "config",
                            "--learning_rate", "2e-6")  # the command line wins over the file, as in sd-scripts
    assert {line.split(":")[0].strip() for line in lines if line.startswith("  ")} == {"--lr_scheduler polynomial", "--lowram"}
    written = tomllib.loads((tmp_path / "run.toml").read_text())
    assert written["unet"]["learning_rate"] == 2e-6 and written["checkpoint"]["format"] == "diffusers"
    (source,) = written["data"]["sources"]
    assert source["command_line"] == {"resolution": "64,64", "min_bucket_reso": 32, "max_bucket_reso": 128,
                                      "bucket_reso_steps": 16, "shuffle_caption": True, "caption_extension": ".txt"}  # fmt: skip
    (candidate,) = iter_candidates(load_data_config(tmp_path / "run.toml").sources)  # batch_size 2 agrees with the run
    assert candidate.subset.repeats == 3 and candidate.buckets.size == (64, 64) and candidate.buckets.enabled
    assert candidate.subset.caption_options == {"shuffle_caption": True}
    assert "total" in dry_run(load_run_config(tmp_path / "run.toml"), toy_base)


def test_refusals_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["sdxl_train.py", "--pretrained_model_name_or_path", "m", "--train_data_dir", "img"]
    for extra, message in [([], r"resolution is not set"), (["--resolution", "64", "--train_batch_size", "x"], r"--train_batch_size 'x' is not an integer"),
                           (["--resolution", "64", "--xformers=1"], r"--xformers is a switch")]:  # fmt: skip
        with pytest.raises(TunelabError, match=message):
            import_sd_scripts(base + extra, tmp_path / "run.toml")
    import_sd_scripts(base + ["--resolution", "64", "--min_bucket_reso", "32"], tmp_path / "run.toml")
    with pytest.raises(TunelabError, match="already exists"):
        import_sd_scripts(base + ["--resolution", "64"], tmp_path / "run.toml")


def test_the_docs_table_is_the_flag_table():
    docs = (Path(__file__).parents[2] / "docs" / "SD_SCRIPTS.md").read_text()
    assert flag_table_markdown() in docs
    assert all(flag.key or flag.why for flag in FLAGS.values())  # every flag: a key or a reason
