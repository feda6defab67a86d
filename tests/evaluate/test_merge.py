import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.merge import MergeAlphas, merge_files, merge_models
from tunelab.models.tiny import tiny_sd15, tiny_sdxl


def snapshot(model) -> dict[str, dict[str, torch.Tensor]]:
    return {part: {k: v.clone() for k, v in m.state_dict().items()} for part, m in model.named_parts().items()}


def assert_parts(model, expected_per_part: dict[str, dict[str, torch.Tensor]], exact: bool = True):
    for part, module in model.named_parts().items():
        for key, tensor in module.state_dict().items():
            expected = expected_per_part[part][key]
            assert torch.equal(tensor, expected) if exact else torch.allclose(tensor, expected, atol=1e-7), (part, key)


def test_alpha_0_and_1_reproduce_inputs_bit_for_bit_and_half_is_the_mean():
    a0, b0 = snapshot(tiny_sdxl(seed=0)), snapshot(tiny_sdxl(seed=1))
    assert_parts(merge_models(tiny_sdxl(seed=0), tiny_sdxl(seed=1), MergeAlphas(0, 0, 0), progress=False), a0)
    assert_parts(merge_models(tiny_sdxl(seed=0), tiny_sdxl(seed=1), MergeAlphas(1, 1, 1), progress=False), b0)
    half = merge_models(tiny_sdxl(seed=0), tiny_sdxl(seed=1), MergeAlphas(0.5, 0.5, 0.5), progress=False)
    mean = {p: {k: (a0[p][k] + b0[p][k]) / 2 if a0[p][k].is_floating_point() else a0[p][k] for k in a0[p]} for p in a0}
    assert_parts(half, mean)
    some_weight = half.unet.state_dict()["conv_in.weight"]
    assert not torch.equal(some_weight, a0["unet"]["conv_in.weight"])  # the merge really changed something


def test_per_component_alphas():
    a0, b0 = snapshot(tiny_sdxl(seed=0)), snapshot(tiny_sdxl(seed=1))
    alphas = MergeAlphas.from_options(0.3, unet=1.0, text_encoders=0.0)
    merged = merge_models(tiny_sdxl(seed=0), tiny_sdxl(seed=1), alphas, progress=False)
    assert_parts(merged, {"unet": b0["unet"], "text_encoder": a0["text_encoder"],
                          "text_encoder_2": a0["text_encoder_2"],
                          "vae": {k: (0.7 * a0["vae"][k] + 0.3 * b0["vae"][k]) for k in a0["vae"]}}, exact=False)
    assert alphas.vae == 0.3
    with pytest.raises(TunelabError, match="expected a number from 0 to 1"):
        MergeAlphas.from_options(1.5)


def test_mismatched_models_are_refused():
    with pytest.raises(TunelabError, match="sdxl.*sd15"):
        merge_models(tiny_sdxl(), tiny_sd15(), MergeAlphas())
    with pytest.raises(TunelabError, match="cannot merge unet.conv_in.weight"):
        merge_models(tiny_sdxl(), tiny_sdxl(block_out_channels=(16, 64, 128)), MergeAlphas())


def test_merge_files_any_format_in_and_out(tmp_path):
    from tunelab.models.io import load_model, save_model

    a, b = tiny_sdxl(seed=0), tiny_sdxl(seed=1)
    a0, b0 = snapshot(a), snapshot(b)
    save_model(a, tmp_path / "a.safetensors", format="single-file")
    save_model(b, tmp_path / "b", format="diffusers")
    merge_files(tmp_path / "a.safetensors", tmp_path / "b", tmp_path / "c", MergeAlphas.from_options(1.0, unet=0.0))
    c = load_model(tmp_path / "c")
    assert_parts(c, {**b0, "unet": a0["unet"]})
    with pytest.raises(TunelabError, match="output is one of the inputs"):
        merge_files(tmp_path / "a.safetensors", tmp_path / "b", tmp_path / "b", MergeAlphas())


def test_merge_command(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.models.io import load_model, save_model

    a, b = tiny_sdxl(seed=0), tiny_sdxl(seed=1)
    a0, b0 = snapshot(a), snapshot(b)
    save_model(a, tmp_path / "a.safetensors", format="single-file", dtype="fp16")
    save_model(b, tmp_path / "b.safetensors", format="single-file", dtype="fp16")
    runner = CliRunner()
    args = ["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "c.safetensors")]
    result = runner.invoke(app, args + ["--alpha", "0.25", "--text-encoder-alpha", "1"])
    assert result.exit_code == 0, result.output
    c = load_model(tmp_path / "c.safetensors")
    assert c.unet.conv_in.weight.dtype == torch.float32  # loaded as fp32; stored as A's fp16 (checked below)
    expected = (0.75 * a0["unet"]["conv_in.weight"].half().float() + 0.25 * b0["unet"]["conv_in.weight"].half().float())
    assert torch.equal(c.unet.conv_in.weight, expected.half().float())
    for key, tensor in c.text_encoders[0].state_dict().items():  # text encoders: all B (alpha 1)
        assert torch.equal(tensor, b0["text_encoder"][key].half().float() if tensor.is_floating_point() else tensor)
    result = runner.invoke(app, args + ["--alpha", "2"])
    assert isinstance(result.exception, TunelabError) and "from 0 to 1" in str(result.exception)
