"""Bad sampling settings are one line and exit 2 before any model loads (no diffusers traceback); seeds stay within
0 … 2³²−1; --empty-as-zeros is written into the infotext of every image it changed."""

import subprocess
import sys

import numpy as np
import pytest

from tunelab.errors import TunelabError
from tunelab.evaluate.infotext import read_png_infotext
from tunelab.evaluate.samples import sample_to_folder
from tunelab.evaluate.sampling import SampleRequest
from tunelab.models.io import save_model
from tunelab.models.tiny import tiny_sdxl
from tunelab.toy.base_model import TOY_BASE_DIR

MAX_SEED = 2**32 - 1  # A1111's seed range


def tunelab(*args):
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--width", "30"], "error: width 30: must be a multiple of 8 (the VAE works on 8×8-pixel blocks), e.g. 32"),
    (["--seed", str(MAX_SEED), "--count", "2"], f"error: seed {MAX_SEED + 1}: must be 0 to {MAX_SEED}"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, args, message):
    result = tunelab("sample", TOY_BASE_DIR, "--prompt", "red circle", "--steps", "1", "--out", tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "out").exists()


def test_other_bad_settings_are_refused():
    with pytest.raises(TunelabError, match="height 0: must be a multiple of 8"):
        SampleRequest(prompt="", seed=0, height=0)
    with pytest.raises(TunelabError, match="seed -1: must be 0 to"):
        SampleRequest(prompt="", seed=-1)
    with pytest.raises(TunelabError, match="cfg_scale nan: must be a finite number"):
        SampleRequest(prompt="", seed=0, cfg_scale=float("nan"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tiny_sdxl(seed=0), tmp_path_factory.mktemp("m") / "tiny.safetensors", format="single-file")


def test_clip_skip_past_the_encoder_layers_is_refused(model, tmp_path):
    request = SampleRequest(prompt="red", seed=0, steps=1, width=32, height=32, clip_skip=40)
    with pytest.raises(TunelabError, match="clip_skip 40: this model's text encoder has [0-9]+ layers"):
        sample_to_folder(model, [request], tmp_path, progress=False)


def test_last_seed_renders_and_empty_as_zeros_is_recorded(model, tmp_path):
    base = SampleRequest(prompt="", seed=MAX_SEED - 1, steps=2, width=32, height=32, cfg_scale=1.0)
    requests = [base, base.with_(seed=MAX_SEED), base.with_(prompt="red", negative_prompt="blurry")]
    zeros = sample_to_folder(model, requests, tmp_path / "zeros", empty_prompt_as_zeros=True, progress=False)
    plain = sample_to_folder(model, requests, tmp_path / "plain", progress=False)
    infos = [read_png_infotext(f) for f in zeros]
    assert [i.seed for i in infos] == [MAX_SEED - 1, MAX_SEED, MAX_SEED - 1]
    assert [i.extra.get("Empty prompt as zeros") for i in infos] == ["True", "True", None]
    assert all("Empty prompt as zeros" not in read_png_infotext(f).extra for f in plain)
    pixels = [[np.asarray(read(f)) for f in files] for files in (zeros, plain) for read in [_image]]
    assert not np.array_equal(pixels[0][0], pixels[1][0])  # the setting changed the image: it must be recorded
    assert np.array_equal(pixels[0][2], pixels[1][2])  # and only images with an empty text


def _image(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_sample_without_prompt_says_unconditional_and_prints_no_library_noise(model, tmp_path):
    result = tunelab("sample", model, "--steps", "1", "--width", "32", "--height", "32", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr and "warn" not in result.stderr.lower()
    assert result.stdout.strip() == f"wrote 1 image to {tmp_path / 'out'} (no --prompt: unconditional, empty prompt)"
    assert read_png_infotext(tmp_path / "out" / "0000-0.png").prompt == ""
