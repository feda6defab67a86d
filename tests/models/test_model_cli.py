"""`tunelab info` / `tunelab convert` as a user runs them (subprocess), including every kind of bad input."""

import os
import subprocess
import sys

import pytest
import torch

from tunelab.models.io import load_model, save_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_CACHE": str(tmp_path_factory.mktemp("cache"))}


def start(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunelab.cli", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_all(env, commands) -> list[tuple[int, str, str]]:
    """Start every command at once (each pays the ~3 s import once, in parallel), then collect."""
    procs = [start(env, *args) for args in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    return results


def parse_parameters(stdout: str) -> dict[str, int]:
    lines = stdout.splitlines()
    rows = lines[lines.index("parameters:") + 1 :]
    return {name: int(count.replace(",", "")) for name, count in (row.split() for row in rows)}


def test_info_and_convert_on_tiny_models(tiny_sdxl_model, tiny_sd15_model, tmp_path, env):
    sdxl_dir = save_model(tiny_sdxl_model, tmp_path / "sdxl", format="diffusers")
    sd15_file = save_model(tiny_sd15_model, tmp_path / "sd15.safetensors", format="single-file")
    results = run_all(env, [
        ("info", sdxl_dir),
        ("info", sd15_file),
        ("convert", sdxl_dir, tmp_path / "sdxl16.safetensors", "--to", "single-file", "--dtype", "fp16"),
        ("convert", sd15_file, tmp_path / "sd15_dir", "--to", "diffusers"),
    ])
    for rc, out, err in results:
        assert rc == 0, err
    expected = {
        "sdxl": {n: sum(p.numel() for p in m.parameters()) for n, m in tiny_sdxl_model.named_parts().items()},
        "sd15": {n: sum(p.numel() for p in m.parameters()) for n, m in tiny_sd15_model.named_parts().items()},
    }
    for (_, out, _), arch, fmt in [(results[0], "sdxl", "diffusers"), (results[1], "sd15", "single-file")]:
        assert f"architecture: {arch}" in out and f"format: {fmt}" in out and "dtype: fp32" in out
        counts = parse_parameters(out)
        assert counts.pop("total") == sum(expected[arch].values())
        assert counts == expected[arch]
        # every tensor found, per part (no CLIP-G here, so the file holds as many tensors per part as the module)
        model = tiny_sdxl_model if arch == "sdxl" else tiny_sd15_model
        lines = out.splitlines()
        rows = lines[lines.index("tensors:") + 1 : lines.index("parameters:")]
        assert {row.split()[0]: row.split(None, 1)[1] for row in rows} == {
            name: f"all {len(module.state_dict())} found" for name, module in model.named_parts().items()}
    half = load_model(tmp_path / "sdxl16.safetensors", dtype="fp16")
    assert torch.equal(half.unet.conv_in.weight, tiny_sdxl_model.unet.conv_in.weight.half())
    converted = load_model(tmp_path / "sd15_dir")
    assert torch.equal(converted.text_encoders[0].embeddings.token_embedding.weight,
                       tiny_sd15_model.text_encoders[0].embeddings.token_embedding.weight)


def test_bad_inputs_give_one_line_error_and_exit_2(tiny_sdxl_model, tmp_path, env):
    from safetensors.torch import save_file

    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    good = save_model(tiny_sdxl_model, tmp_path / "good.safetensors", format="single-file")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random_keys = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.randn(3, 3), "bar.bias": torch.zeros(3)}, str(random_keys))
    pickle = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(1)}, pickle)
    cases = {
        text: "not a model file",
        truncated: "not a valid .safetensors file",
        random_keys: "unknown architecture",
        tmp_path / "missing.safetensors": "no such file",
        pickle: "pickle",
        tmp_path: "not a diffusers model",
    }
    commands = [("info", path) for path in cases]
    commands.append(("convert", text, tmp_path / "out.safetensors", "--to", "single-file"))
    for (rc, out, err), (path, problem) in zip(run_all(env, commands), [*cases.items(), (text, "not a model file")]):
        assert rc == 2, (path, out, err)
        assert "Traceback" not in err
        assert err.strip().count("\n") == 0, err  # one line
        assert err.startswith(f"error: {path}: ") and problem in err, err
    assert not (tmp_path / "out.safetensors").exists()
