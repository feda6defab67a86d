"""Frozen parts kept out of memory are streamed from their offload file into a checkpoint (issue 16): the result is
tensor-identical to writing the loaded modules, in both formats and with a dtype cast, and nothing is loaded back."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_run import small_sdxl, tiny_items

from tunelab.models.io import save_model
from tunelab.train.offload import OffloadedModules


def weight_files(path: Path) -> dict[str, Path]:
    return {str(f.relative_to(path)): f for f in sorted(path.rglob("*.safetensors"))} if path.is_dir() else {"": path}


def assert_same_model(reference: Path, streamed: Path) -> None:
    """Same files, same keys, tensors equal in value, dtype and shape; same configs and metadata."""
    files = weight_files(reference)
    assert files.keys() == weight_files(streamed).keys()
    for name, ref in files.items():
        with safe_open(ref, "pt") as a, safe_open(weight_files(streamed)[name], "pt") as b:
            assert a.metadata() == b.metadata()
            assert sorted(a.keys()) == sorted(b.keys())
            for key in a.keys():
                x, y = a.get_tensor(key), b.get_tensor(key)
                assert x.dtype == y.dtype and torch.equal(x, y), f"{name}: {key}"
    if reference.is_dir():
        configs = sorted(p.relative_to(reference) for p in reference.rglob("*.json"))
        assert configs == sorted(p.relative_to(streamed) for p in streamed.rglob("*.json"))
        for config in configs:
            assert json.loads((reference / config).read_text()) == json.loads((streamed / config).read_text())


@pytest.mark.parametrize("fmt,dtype", [("diffusers", None), ("diffusers", "bf16"), ("single-file", None),
                                       ("single-file", "fp16")])
def test_streamed_frozen_parts_equal_the_loaded_write(tmp_path, fmt, dtype):
    components = small_sdxl()
    name = "model" if fmt == "diffusers" else "model.safetensors"
    save_model(components, tmp_path / "reference" / name, format=fmt, dtype=dtype)
    frozen = {"text_encoder": components.text_encoders[0], "text_encoder_2": components.text_encoders[1],
              "vae": components.vae}  # a transformers and a diffusers part; CLIP-G has the q/k/v concatenation
    offloaded = OffloadedModules(frozen, tmp_path / "offload")
    sources = offloaded.sources(components.named_parts())
    assert sorted(sources) == sorted(frozen)
    save_model(components, tmp_path / "streamed" / name, format=fmt, dtype=dtype, frozen=sources)
    assert all(p.device.type == "meta" for m in frozen.values() for p in m.parameters())  # never loaded back
    assert_same_model(tmp_path / "reference" / name, tmp_path / "streamed" / name)


def test_training_checkpoint_with_offloaded_encoders(train_tiny, tmp_path):
    """Cached embeddings + frozen encoders: the run keeps them offloaded, its final checkpoint streams them, and it
    equals the run's final model written the usual way."""
    from tunelab.models.text_conditioning import encode_prompts

    items = tiny_items()
    with torch.no_grad():
        e = encode_prompts(small_sdxl(), items["captions"], empty_as_zeros=True)
    items.update(prompt_embeds=e.prompt_embeds, pooled_prompt_embeds=e.pooled_prompt_embeds)
    components, _, run = train_tiny(items, text_encoder={"mode": "off"}, checkpoint={"format": "single-file"})
    assert run.offloaded is not None  # the encoders were out of memory during the run
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000003" / "model.safetensors"
    save_model(components, tmp_path / "reference.safetensors", format="single-file")  # loaded back by the run's end
    assert_same_model(tmp_path / "reference.safetensors", checkpoint)
