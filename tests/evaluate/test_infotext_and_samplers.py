import pytest
from PIL import Image

from tunelab.errors import TunelabError
from tunelab.evaluate.infotext import Infotext, model_hash, parse_infotext, read_png_infotext, save_png_with_infotext
from tunelab.evaluate.samplers import SAMPLERS, make_scheduler, sampler_name


def test_infotext_written_into_png_reads_back(tmp_path):
    info = Infotext(
        prompt="(car:0), [[rx7]], (1boy:0), [kagamine_len]\nsecond line, ｱｽﾄﾙﾌｫ",
        negative_prompt="lowres, bad anatomy",
        steps=20,
        sampler="DPM++ 2M Karras",
        cfg_scale=6.5,
        seed=1234567890123,
        width=832,
        height=1216,
        model_hash="abcdef1234",
        model="my, finetune: v2",
        clip_skip=2,
        extra={"Grid cell": "x=1 y=0"},
    )
    path = tmp_path / "cell.png"
    save_png_with_infotext(Image.new("RGB", (8, 8), (255, 0, 0)), path, info)
    assert read_png_infotext(path) == info
    assert Image.open(path).getpixel((3, 3)) == (255, 0, 0)


def test_infotext_text_layout_matches_a1111():
    info = Infotext(prompt="PROMPT", negative_prompt="NEG", steps=20, sampler="Euler a", cfg_scale=6.0, seed=123,
                    width=1024, height=1024, model_hash="abcdef1234", model="name")
    assert info.to_text() == (
        "PROMPT\nNegative prompt: NEG\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 6, Seed: 123, Size: 1024x1024, Model hash: abcdef1234, Model: name"
    )


def test_parse_a1111_output_with_schedule_type_and_empty_prompt():
    text = "\nSteps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 7, Size: 64x32, Version: v1.10.0"
    info = parse_infotext(text)
    assert (info.prompt, info.sampler, info.cfg_scale, info.width, info.height) == ("", "DPM++ 2M Karras", 5.0, 64, 32)
    assert info.extra == {"Version": "v1.10.0"}
    assert sampler_name("Euler a", "Automatic") == "Euler a"


def test_png_without_infotext_is_a_clear_error(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(TunelabError, match="no 'parameters'"):
        read_png_infotext(tmp_path / "plain.png")


def test_model_hash_is_first_10_hex_of_sha256(tmp_path):
    import hashlib

    f = tmp_path / "m.safetensors"
    f.write_bytes(b"weights" * 1000)
    assert model_hash(f) == hashlib.sha256(b"weights" * 1000).hexdigest()[:10]
    folder = tmp_path / "diffusers"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "a.safetensors").write_bytes(b"1")
    first = model_hash(folder)
    (folder / "unet" / "a.safetensors").write_bytes(b"2")
    assert len(first) == 10 and model_hash(folder) != first


def test_every_sampler_keeps_the_models_noise_schedule(tiny_sdxl_model):
    base = tiny_sdxl_model.scheduler
    for name in SAMPLERS:
        scheduler = make_scheduler(name, base)
        assert scheduler.config.beta_end == base.config.beta_end and scheduler.config.num_train_timesteps == 1000
    assert make_scheduler("DPM++ 2M Karras", base).config.use_karras_sigmas is True
    assert make_scheduler("Euler a", base).__class__.__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.raises(TunelabError, match="unknown sampler 'Euler b'"):
        make_scheduler("Euler b", base)
