import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler

from tunelab.errors import TunelabError
from tunelab.evaluate.sampling import SampleRequest, SamplingEngine

BASE = SampleRequest(prompt="", seed=0, steps=4, width=32, height=32, cfg_scale=5.0, sampler="Euler a")
LONG = ", ".join(f"tag{i}" for i in range(50))  # > 75 tokens: two chunks


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_pixel_difference(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.mark.parametrize("model", ["tiny_sdxl_model", "tiny_sd15_model"])
def test_an_image_is_the_same_alone_or_in_a_batch(model, request):
    engine = SamplingEngine(request.getfixturevalue(model), progress=False)
    prompts = ["red circle", "(blue:1.3), [[square]]", "", LONG]
    requests = [BASE.with_(prompt=p, seed=s, negative_prompt="lowres" if s == 2 else "") for p in prompts for s in (1, 2)]
    batched = engine.render(requests)
    for i in (0, 3, 4, 7):  # plain, weighted + negative, empty (unconditional), long
        alone = engine.render([requests[i]])[0]
        assert max_pixel_difference(batched[i], alone) <= 1  # ≤ 1/255 per pixel
    assert max_pixel_difference(batched[0], batched[1]) > 10  # seeds differ → images differ


def test_engine_equals_diffusers_pipeline_on_text_prompts(tiny_sdxl_model):
    """The engine is a plain SD sampler: same image as diffusers encoding the prompt text itself."""
    m = tiny_sdxl_model
    engine = SamplingEngine(m, progress=False)
    request = BASE.with_(prompt="red circle, forest", negative_prompt="blue", seed=11, sampler="Euler a")
    ours = engine.render([request])[0]
    pipe = m.pipeline(scheduler=EulerAncestralDiscreteScheduler.from_config(m.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "red circle, forest", negative_prompt="blue", num_inference_steps=4, guidance_scale=5.0, width=32, height=32,
        generator=[torch.Generator().manual_seed(11)],
    ).images[0]
    assert max_pixel_difference(ours, theirs) <= 1


def test_batches_group_by_settings_and_chunk_count(tiny_sdxl_model):
    engine = SamplingEngine(tiny_sdxl_model, batch_size=3, progress=False)
    requests = [BASE.with_(prompt="a", seed=s) for s in range(5)]  # 0-4: one group, split 3 + 2
    requests += [BASE.with_(prompt="a", seed=0, cfg_scale=2.0)]  # 5: other CFG
    requests += [BASE.with_(prompt=LONG, seed=0), BASE.with_(prompt="a", negative_prompt=LONG, seed=1)]  # 6, 7: 2 chunks
    assert engine.plan_batches(requests) == [[0, 1, 2], [3, 4], [5], [6, 7]]
    with pytest.raises(TunelabError, match="unknown sampler"):
        engine.plan_batches([BASE.with_(sampler="Euler b")])


@torch.no_grad()
def test_empty_prompt_is_unconditional_generation(tiny_sdxl_model):
    engine = SamplingEngine(tiny_sdxl_model, progress=False)
    uncond = BASE.with_(prompt="", negative_prompt="", seed=5)
    with_cfg, without_cfg = engine.render([uncond, uncond.with_(cfg_scale=1.0)])
    assert max_pixel_difference(with_cfg, without_cfg) <= 1  # cond == uncond: guidance has nothing to add
    zeros = SamplingEngine(tiny_sdxl_model, empty_prompt_as_zeros=True, progress=False).render([uncond])[0]
    assert max_pixel_difference(zeros, with_cfg) > 10  # zero embedding ≠ encoded empty text


def test_settings_change_the_image(tiny_sd15_model):
    engine = SamplingEngine(tiny_sd15_model, progress=False)
    ref = BASE.with_(prompt="red circle", seed=3)
    variants = [ref, ref.with_(cfg_scale=9.0), ref.with_(steps=6), ref.with_(sampler="DPM++ 2M Karras"),
                ref.with_(clip_skip=2), ref.with_(prompt="red (circle:2.0)")]
    images = engine.render(variants)
    for other in images[1:]:
        assert max_pixel_difference(images[0], other) > 2
    assert engine.render([ref.with_(width=48, height=32)])[0].size == (48, 32)
