"""Loading a single file gives back exactly the model that was saved (issue 19): tunelab's own key mapping, one
explicit prefix per part, so two text encoders of the same width (the toy base) are never swapped; a model with a
tensor missing is refused with one line naming it, whatever its format."""

import os
import subprocess
import sys

import pytest
import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tunelab.errors import TunelabError
from tunelab.models.completeness import check_nothing_on_meta
from tunelab.models.config_folders import shipped_configs
from tunelab.models.convert import convert_model
from tunelab.models.info import model_info
from tunelab.models.io import load_model, save_model
from tunelab.models.ldm_layout import components_to_ldm, ldm_to_parts
from tunelab.models.single_file import assign_weights, build_modules, empty_components
from tunelab.models.tiny import tiny_sd15, tiny_sdxl
from tunelab.toy.base_model import TOY_BASE_DIR

CLIP_G_PROJECTION = "conditioner.embedders.1.model.text_projection"
CLIP_L_K_BIAS = "conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.k_proj.bias"


@pytest.fixture(autouse=True, scope="module")
def tunelab_cache(tmp_path_factory):
    old = os.environ.get("TUNELAB_CACHE")
    os.environ["TUNELAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TUNELAB_CACHE")
    else:
        os.environ["TUNELAB_CACHE"] = old


def assert_tensor_identical(a, b):
    """Every part: same keys, dtypes and values; nothing of `b` left on the meta device."""
    assert list(a.named_parts()) == list(b.named_parts())
    for name, module in a.named_parts().items():
        other = b.named_parts()[name]
        sa, sb = module.state_dict(), other.state_dict()
        assert set(sa) == set(sb), name
        for key, tensor in sa.items():
            assert sb[key].device.type == "cpu", (name, key)
            assert sb[key].dtype == tensor.dtype, (name, key)
            assert torch.equal(sb[key], tensor), (name, key)
        assert all(t.device.type == "cpu" for _, t in other.named_buffers()), name


def test_toy_base_folder_to_single_file_loads_tensor_identical(tmp_path):
    """The reported case: both toy-base text encoders are 32 wide; `tunelab convert` keeps the stored fp16."""
    single = convert_model(TOY_BASE_DIR, tmp_path / "toy.safetensors", to="single-file")
    folder, loaded = load_model(TOY_BASE_DIR), load_model(single)
    te1, te2 = folder.text_encoders
    assert te1.config.hidden_size == te2.config.hidden_size  # the case a width-based guess gets wrong
    assert_tensor_identical(folder, loaded)
    assert loaded.extra["force_zeros_for_empty_prompt"] == folder.extra["force_zeros_for_empty_prompt"]
    with torch.no_grad():  # and it computes the same: the pooled embedding comes from text_encoder_2
        ids = folder.tokenizers[1]("a purple star", padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.equal(te2(ids).text_embeds, loaded.text_encoders[1](ids).text_embeds)


def _sdxl_equal_widths():
    return tiny_sdxl(seed=5, te_widths=(48, 48))


@pytest.mark.parametrize("build", [lambda: tiny_sdxl(seed=1), lambda: tiny_sd15(seed=2), _sdxl_equal_widths],
                         ids=["sdxl", "sd15", "sdxl-equal-widths"])
def test_tiny_folder_to_single_file_loads_tensor_identical(build, tmp_path):
    original = build()
    folder = load_model(save_model(original, tmp_path / "folder"))
    single = save_model(folder, tmp_path / "model.safetensors", format="single-file")
    assert_tensor_identical(original, load_model(single))
    half = load_model(single, dtype="fp16")
    for te, te_half in zip(original.text_encoders, half.text_encoders, strict=True):
        assert te_half.dtype == torch.float16
        assert torch.equal(te_half.get_input_embeddings().weight, te.get_input_embeddings().weight.half())


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_full_size_layout_maps_back_on_meta(arch):
    """Full-size SDXL / SD1.5 on the meta device: single-file layout → our inverse gives every module key, with
    its shape, and nothing left over."""
    components = empty_components(arch, shipped_configs(arch))
    parts, unplaced = ldm_to_parts(components_to_ldm(components), arch, shipped_configs(arch))
    assert unplaced == []
    assert list(parts) == list(components.named_parts())
    for name, module in components.named_parts().items():
        expected = {k.removeprefix("text_model."): tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k.removeprefix("text_model."): tuple(v.shape) for k, v in parts[name].items()}
        assert got == expected, name
    if arch == "sdxl":
        assert parts["text_encoder_2"]["text_model.encoder.layers.31.self_attn.v_proj.weight"].shape == (1280, 1280)
        assert len(parts["text_encoder_2"]) == 517  # 32 layers × 16 + 2 embeddings + final norm ×2 + projection
    # the loader's strict assignment takes them (meta tensors stand in for the weights), and the completeness check
    # then names a tensor that holds no data
    with init_empty_weights():
        modules = build_modules(arch, shipped_configs(arch))
    for name, module in modules.items():
        assign_weights(module, parts[name], torch.float16, "full.safetensors", name)
        assert all(p.dtype == torch.float16 for p in module.parameters())
    components.unet, components.vae = modules["unet"], modules["vae"]
    components.text_encoders = [m for n, m in modules.items() if n.startswith("text_encoder")]
    with pytest.raises(TunelabError, match=r"^full.safetensors: unet: weight conv_in.weight was never read"):
        check_nothing_on_meta(components, "full.safetensors")


def test_non_square_clip_g_projection_is_transposed_back(tmp_path):
    """Real CLIP-G's projection is square; a [proj, width] one shows the file's [width, proj] is undone."""
    from tunelab.models.tiny import tiny_text_encoder

    model = tiny_sdxl(seed=4)
    model.text_encoders[1] = tiny_text_encoder(64, 3, 4, 24, "gelu")
    path = save_model(model, tmp_path / "m.safetensors", format="single-file")
    with safe_open(str(path), "pt") as f:
        assert f.get_slice(CLIP_G_PROJECTION).get_shape() == [64, 24]
    assert_tensor_identical(model, load_model(path))


def _without(src, dst, key):
    with safe_open(str(src), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(src))
    del tensors[key]
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_missing_text_encoder_tensor_named_by_load_and_cli(tiny_sdxl_model, tmp_path):
    good = save_model(tiny_sdxl_model, tmp_path / "good.safetensors", format="single-file")
    no_projection = _without(good, tmp_path / "no_projection.safetensors", CLIP_G_PROJECTION)
    no_bias = _without(good, tmp_path / "no_bias.safetensors", CLIP_L_K_BIAS)
    with pytest.raises(TunelabError, match=f"no_bias.safetensors: missing weight {CLIP_L_K_BIAS} "):
        load_model(no_bias)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    commands = [("convert", no_projection, tmp_path / "out", "--to", "diffusers"), ("info", no_bias)]
    procs = [subprocess.Popen([sys.executable, "-m", "tunelab.cli", *map(str, c)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err), path, key in zip(procs, outputs, [no_projection, no_bias], [CLIP_G_PROJECTION, CLIP_L_K_BIAS]):
        assert proc.returncode == 2, err
        assert "Traceback" not in err and err.strip().count("\n") == 0, err
        assert err.startswith(f"error: {path}: missing weight {key} "), err
    assert not (tmp_path / "out").exists()
    # info describes the file first: the incomplete part and the complete ones
    rows = dict(line.split(None, 1) for line in _section(outputs[1][0], "tensors:"))
    assert rows["text_encoder"] == f"51 of 52 found, missing {CLIP_L_K_BIAS}"
    assert rows["text_encoder_2"] == "all 41 found" and rows["unet"].startswith("all ")


def _section(stdout: str, title: str) -> list[str]:
    """The indented rows under `title` in `tunelab info`'s output."""
    rows = []
    for line in stdout.splitlines()[stdout.splitlines().index(title) + 1 :]:
        if not line.startswith("  "):
            break
        rows.append(line.strip())
    return rows


def test_folder_with_a_missing_tensor_is_refused_and_info_names_it(tiny_sdxl_model, tmp_path):
    """The libraries' own silence: diffusers leaves a missing UNet weight on meta, transformers fills a missing
    text-encoder weight with random numbers. Both are refused with the weight named; info shows which part."""
    for part, file, key in [("unet", "diffusion_pytorch_model.safetensors", "conv_in.weight"),
                            ("text_encoder_2", "model.safetensors", "text_projection.weight")]:
        folder = save_model(tiny_sdxl_model, tmp_path / part)
        tensors = load_file(str(folder / part / file))
        del tensors[key]
        save_file(tensors, str(folder / part / file), metadata={"format": "pt"})
        with pytest.raises(TunelabError, match=f"{part}: missing weight {key} "):
            load_model(folder)
        info = model_info(folder)
        assert not info.complete and info.tensors[part].missing == [key]
        assert info.problem().startswith(f"missing weight {key} ({part}: ")
        assert all(report.complete for name, report in info.tensors.items() if name != part)


def test_unexpected_weight_inside_a_part_is_named_training_state_outside_is_ignored(tiny_sd15_model, tmp_path):
    good = save_model(tiny_sd15_model, tmp_path / "good.safetensors", format="single-file")
    with safe_open(str(good), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(good))
    tensors["model_ema.num_updates"] = torch.tensor(7)  # training state: not the model
    tensors["first_stage_model.loss.logvar"] = torch.zeros(())  # the autoencoder's training loss
    save_file(tensors, str(tmp_path / "ema.safetensors"), metadata=metadata)
    assert_tensor_identical(tiny_sd15_model, load_model(tmp_path / "ema.safetensors"))
    extra_layer = "cond_stage_model.transformer.text_model.encoder.layers.9.mlp.fc1.weight"  # configs have 3 layers
    tensors[extra_layer] = torch.zeros(4, 4)
    save_file(tensors, str(tmp_path / "extra.safetensors"), metadata=metadata)
    with pytest.raises(TunelabError, match=f"unexpected weight {extra_layer} "):
        load_model(tmp_path / "extra.safetensors")
