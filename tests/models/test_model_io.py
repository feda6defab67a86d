"""load_model / save_model on tiny SDXL and SD1.5: exact round trips, diffusers' own loader, dtypes, pickles."""

import json
import os

import numpy as np
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models.config_folders import config_folder
from tunelab.models.io import load_model, save_model
from tunelab.models.single_file import METADATA_CONFIGS
from tunelab.models.tiny import tiny_sd15, tiny_sdxl
from tunelab.models.tokenizers import clip_tokenizer


@pytest.fixture(autouse=True, scope="module")
def tunelab_cache(tmp_path_factory):
    """Config folders go to a temp cache, not ~/.cache."""
    old = os.environ.get("TUNELAB_CACHE")
    os.environ["TUNELAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TUNELAB_CACHE")
    else:
        os.environ["TUNELAB_CACHE"] = old


def assert_same_tensors(a, b):
    for (name, module_a), (name_b, module_b) in zip(a.named_parts().items(), b.named_parts().items(), strict=True):
        assert name == name_b
        sa, sb = module_a.state_dict(), module_b.state_dict()
        assert set(sa) == set(sb), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, (name, key)
            assert torch.equal(sa[key], sb[key]), (name, key)


def generate(components) -> np.ndarray:
    pipe = components.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle",
        negative_prompt="blurry",
        num_inference_steps=3,
        height=32,
        width=32,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return out.images[0]


@pytest.fixture(scope="module", params=["sdxl", "sd15"])
def round_trip(request, tmp_path_factory):
    """original tiny model → diffusers folder → single file → diffusers folder → loaded."""
    tmp = tmp_path_factory.mktemp(request.param)
    original = (tiny_sdxl if request.param == "sdxl" else tiny_sd15)(seed=3)
    save_model(original, tmp / "first", format="diffusers")
    single = save_model(load_model(tmp / "first"), tmp / "model.safetensors", format="single-file")
    save_model(load_model(single), tmp / "second", format="diffusers")
    return original, tmp, load_model(tmp / "second")


def test_round_trip_keeps_every_tensor_bit_identical(round_trip):
    original, tmp, reloaded = round_trip
    assert reloaded.architecture == original.architecture
    assert_same_tensors(original, reloaded)
    assert_same_tensors(original, load_model(tmp / "model.safetensors"))


def test_round_trip_generates_pixel_identical_image(round_trip):
    original, _, reloaded = round_trip
    before, after = generate(original), generate(reloaded)
    assert before.shape == (32, 32, 3)
    assert before.std() > 0  # a real image, not a constant
    np.testing.assert_array_equal(before, after)


def test_round_trip_keeps_scheduler_and_tokenizers(round_trip):
    original, _, reloaded = round_trip
    assert type(reloaded.scheduler) is type(original.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(reloaded.scheduler.config) == public(original.scheduler.config)
    text = "a purple star, 1girl"
    for tok_a, tok_b in zip(original.tokenizers, reloaded.tokenizers, strict=True):
        a = tok_a(text, padding="max_length", max_length=77).input_ids
        assert a == tok_b(text, padding="max_length", max_length=77).input_ids


def test_single_file_loads_through_diffusers_from_single_file(round_trip):
    """Our file is a valid original-layout checkpoint for diffusers' own loader (offline, config=local folder)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    original, tmp, _ = round_trip
    cls = StableDiffusionXLPipeline if original.is_sdxl else StableDiffusionPipeline
    kwargs = {} if original.is_sdxl else dict(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_single_file(str(tmp / "model.safetensors"), config=str(tmp / "first"), local_files_only=True, **kwargs)
    parts = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    if original.is_sdxl:
        parts["text_encoder_2"] = pipe.text_encoder_2
    for name, module in original.named_parts().items():
        theirs = parts[name].state_dict()
        for key, tensor in module.state_dict().items():
            assert torch.equal(theirs[key].reshape(tensor.shape), tensor), (name, key)


def test_file_carries_configs_and_original_layout(round_trip):
    from safetensors import safe_open

    original, tmp, _ = round_trip
    with safe_open(str(tmp / "model.safetensors"), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
    assert json.loads(metadata[METADATA_CONFIGS])["unet"]["block_out_channels"] == list(
        original.unet.config.block_out_channels
    )
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.conv_out.weight" in keys
    assert not any(k.startswith(("unet.", "down_blocks.", "text_model.")) for k in keys)


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_save_dtype_casts_weights_and_leaves_model_alone(tiny_sdxl_model, tmp_path, dtype, torch_dtype):
    from safetensors import safe_open

    path = save_model(tiny_sdxl_model, tmp_path / "m.safetensors", format="single-file", dtype=dtype)
    with safe_open(str(path), "pt") as f:
        weight = f.get_tensor("model.diffusion_model.out.2.weight")
        position_ids = f.get_tensor("conditioner.embedders.0.transformer.text_model.embeddings.position_ids")
    assert weight.dtype == torch_dtype
    assert position_ids.dtype == torch.int64  # integer buffers are never cast
    assert tiny_sdxl_model.unet.dtype == torch.float32
    loaded = load_model(path, dtype=dtype)
    assert loaded.unet.dtype == torch_dtype and loaded.text_encoders[1].dtype == torch_dtype
    expected = tiny_sdxl_model.unet.conv_out.weight.to(torch_dtype)
    assert torch.equal(loaded.unet.conv_out.weight, expected)
    folder = save_model(tiny_sdxl_model, tmp_path / "folder", format="diffusers", dtype=dtype)
    assert load_model(folder, dtype=dtype).vae.decoder.conv_out.weight.dtype == torch_dtype


def test_pickle_refused_unless_allowed_then_weights_only(tiny_sd15_model, tmp_path):
    from tunelab.models.ldm_layout import components_to_ldm

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {k: v.clone() for k, v in components_to_ldm(tiny_sd15_model).items()}}, ckpt)
    with pytest.raises(TunelabError, match="pickle.*allow-pickle"):
        load_model(ckpt)
    # no tunelab metadata in a pickle: the shipped full-size SD1.5 configs apply, and the tiny shapes don't fit
    with pytest.raises(TunelabError, match=r"shape \[32, 4, 3, 3\].*expects \[320, 4, 3, 3\]"):
        load_model(ckpt, allow_pickle=True)

    from fractions import Fraction  # any non-tensor class: weights_only=True must refuse to unpickle it

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Fraction(1, 3)}, evil)
    with pytest.raises(TunelabError, match="weights-only"):
        load_model(evil, allow_pickle=True)


def test_diffusers_folder_with_pickled_weights_needs_allow_pickle(tiny_sd15_model, tmp_path):
    from safetensors.torch import load_file

    folder = save_model(tiny_sd15_model, tmp_path / "m", format="diffusers")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(TunelabError, match=r"unet: stores its weights as pickle \(\.bin\).*allow-pickle"):
        load_model(folder)
    assert torch.equal(load_model(folder, allow_pickle=True).unet.conv_in.weight, tiny_sd15_model.unet.conv_in.weight)


def test_foreign_file_without_metadata_is_checked_against_full_size_layout(tiny_sdxl_model, tmp_path):
    from safetensors.torch import load_file, save_file

    ours = save_model(tiny_sdxl_model, tmp_path / "ours.safetensors", format="single-file")
    save_file(load_file(str(ours)), str(tmp_path / "foreign.safetensors"))  # same tensors, no metadata
    with pytest.raises(TunelabError, match="standard full-size layout expects"):
        load_model(tmp_path / "foreign.safetensors")


def test_foreign_file_loads_with_the_standard_configs(tiny_sd15_model, tmp_path, monkeypatch):
    """The path real A1111 files take (no metadata → configs of the architecture), with the tiny model's configs
    standing in for the full-size ones so it runs in a second."""
    from safetensors.torch import save_file

    from tunelab.models import single_file
    from tunelab.models.ldm_layout import components_to_ldm

    tensors = {k: v.contiguous() for k, v in components_to_ldm(tiny_sd15_model).items()}
    tensors["model_ema.decay"] = torch.tensor(0.999)  # real files carry extra keys; they are ignored
    save_file(tensors, str(tmp_path / "a1111.safetensors"))
    tiny_configs = single_file.components_configs(tiny_sd15_model)
    monkeypatch.setattr(single_file, "shipped_configs", lambda arch: tiny_configs if arch == "sd15" else None)
    assert_same_tensors(tiny_sd15_model, load_model(tmp_path / "a1111.safetensors"))


def test_hub_style_variant_files(tiny_sd15_model, tmp_path):
    """Hub folders ship `*.fp16.safetensors` next to (or instead of) the fp32 files: counted once, loadable."""
    import shutil

    from tunelab.models.info import model_info

    expected = {n: sum(p.numel() for p in m.parameters()) for n, m in tiny_sd15_model.named_parts().items()}
    both = save_model(tiny_sd15_model, tmp_path / "both", format="diffusers")
    half = save_model(tiny_sd15_model, tmp_path / "half", format="diffusers", dtype="fp16")
    for file in half.glob("*/*.safetensors"):
        variant_name = file.with_name(file.name.replace(".safetensors", ".fp16.safetensors"))
        shutil.copy(file, both / file.parent.name / variant_name.name)
        file.rename(variant_name)
    info = model_info(both)
    assert (info.parameters, info.dtype) == (expected, "fp32")
    info = model_info(half)
    assert (info.parameters, info.dtype) == (expected, "fp16")
    loaded = load_model(half, dtype="fp16")
    assert torch.equal(loaded.unet.conv_out.weight, tiny_sd15_model.unet.conv_out.weight.half())


def test_missing_part_is_named(tiny_sdxl_model, tmp_path):
    from safetensors.torch import load_file, save_file

    ours = save_model(tiny_sdxl_model, tmp_path / "ours.safetensors", format="single-file")
    from safetensors import safe_open

    with safe_open(str(ours), "pt") as f:
        metadata = f.metadata()
    tensors = {k: v for k, v in load_file(str(ours)).items() if not k.startswith("first_stage_model.")}
    save_file(tensors, str(tmp_path / "no_vae.safetensors"), metadata=metadata)
    with pytest.raises(TunelabError, match=r"no_vae.safetensors: missing weight first_stage_model\."):
        load_model(tmp_path / "no_vae.safetensors")


def test_folder_save_refuses_to_replace_unrelated_folder(tiny_sd15_model, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"jpg")
    with pytest.raises(TunelabError, match="not a diffusers model folder"):
        save_model(tiny_sd15_model, precious, format="diffusers")
    assert (precious / "cat.jpg").read_bytes() == b"jpg"
    # an existing model folder is replaced as a whole, and nothing temporary is left next to it
    save_model(tiny_sd15_model, tmp_path / "m", format="diffusers")
    save_model(tiny_sd15_model, tmp_path / "m", format="diffusers", dtype="fp16")
    assert load_model(tmp_path / "m", dtype="fp16").unet.conv_in.weight.dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "photos"]


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_shipped_config_folder_is_a_valid_offline_diffusers_folder(arch):
    """The shipped real configs load with the libraries' own config readers; tokenizers equal the built-in ones."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = config_folder(arch)
    unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
    vae = AutoencoderKL.load_config(folder, subfolder="vae")
    te = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")
    assert te.hidden_size == 768 and te.num_hidden_layers == 12 and te.hidden_act == "quick_gelu"
    assert unet["cross_attention_dim"] == (2048 if arch == "sdxl" else 768)
    assert vae["scaling_factor"] == (0.13025 if arch == "sdxl" else 0.18215)
    pads = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"} if arch == "sdxl" else {"tokenizer": "<|endoftext|>"}
    for sub, pad in pads.items():
        tok = CLIPTokenizer.from_pretrained(folder / sub)
        assert tok.pad_token == pad
        text = "masterpiece, 1girl, purple star"
        assert tok(text, padding="max_length", max_length=77).input_ids == clip_tokenizer(pad)(
            text, padding="max_length", max_length=77
        ).input_ids
    if arch == "sdxl":
        te2 = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2")
        assert (te2.hidden_size, te2.num_hidden_layers, te2.projection_dim, te2.hidden_act) == (1280, 32, 1280, "gelu")
    assert config_folder(arch) == folder  # materialised once, then reused
