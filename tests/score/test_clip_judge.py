"""The CLIP judge on a tiny random CLIPModel the test builds and saves as a hub-layout folder (config.json,
model.safetensors, the real CLIP BPE tokenizer's vocab.json / merges.txt, preprocessor_config.json)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tunelab.errors import TunelabError
from tunelab.models.tokenizers import clip_tokenizer, write_tokenizer_files
from tunelab.score.judges.base import Expectation
from tunelab.score.judges.clip import ClipJudge, _image_processor_class

SIZE = 32
TEXTS = ("a red square", "a blue circle", "a green triangle")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=SIZE, patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    # A larger temperature than the init's 14.3 spreads the probabilities, so argmax and softmax are exercised.
    model.logit_scale.data.fill_(np.log(60.0))
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(folder)
    write_tokenizer_files(folder)
    processor = _image_processor_class()(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(folder)
    return folder, model


def _images(n: int, size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        pixels[..., i % 3] //= 4  # unlike colour casts, so the images differ beyond noise
        images.append(Image.fromarray(pixels))
    return images


def _by_hand(images: list[Image.Image]) -> torch.Tensor:
    """CLIP's preprocessing for images already at the model's size: scale to [0, 1], normalise with CLIP's mean/std."""
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    pixels = np.stack([(np.asarray(im, dtype=np.float64) / 255.0 - mean) / std for im in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float()


def test_verdict_matches_clip_forward_computed_independently(clip_folder):
    folder, model = clip_folder
    judge = ClipJudge(folder, device="cpu", batch_size=4)
    images = _images(6)
    readings = judge.read(images)
    assert readings.shape == (6, 16)
    np.testing.assert_allclose(np.linalg.norm(readings, axis=1), 1.0, atol=1e-5)

    # The documented zero-shot recipe on the in-memory model that was saved: one forward, logits_per_image.
    tokens = clip_tokenizer()(list(TEXTS), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=_by_hand(images))
    expected = out.logits_per_image.double().softmax(dim=-1).numpy()  # [6 images, 3 texts]
    cosine = out.logits_per_image.double().numpy() / model.logit_scale.exp().item()

    wins = np.zeros(len(images), dtype=int)
    for i, text in enumerate(TEXTS):
        expectation = Expectation(text=text, alternatives=tuple(t for t in TEXTS if t != text))
        assert judge.check(expectation) is None
        judged = judge.verdict(readings, expectation)
        np.testing.assert_allclose(judged.score, expected[:, i], atol=1e-4)
        np.testing.assert_array_equal(judged.passed, expected.argmax(axis=1) == i)
        np.testing.assert_allclose(judge.clip_score(readings, text), 100 * cosine[:, i], atol=1e-3)
        wins += judged.passed
    # Each image's text is exactly one of the three, so both outcomes occur across the rotations.
    np.testing.assert_array_equal(wins, 1)
    assert expected.max() - expected.min() > 0.05  # the check above compared spread-out probabilities


def test_a_text_tied_with_its_alternatives_scores_one_third_and_does_not_pass(clip_folder):
    folder, _ = clip_folder
    judge = ClipJudge(folder, device="cpu")
    readings = judge.read(_images(4))
    text = "a red square"
    tied = Expectation(text=text, alternatives=(text, text))
    assert "reads the same" in judge.check(tied)  # a probes file like this is refused before sampling ...
    judged = judge.verdict(readings, tied)  # ... and the tie rule itself: equal logits, no winner
    np.testing.assert_allclose(judged.score, 1 / 3, atol=1e-12)
    assert not judged.passed.any()

    # Spelled differently, the same tokens to CLIP (lower-cased, whitespace collapsed): still an exact tie.
    variant = Expectation(text=text, alternatives=("A  Red Square", "a blue circle"))
    probabilities = judge.probabilities(readings, [variant.text, *variant.alternatives])
    np.testing.assert_array_equal(probabilities[:, 0], probabilities[:, 1])
    judged = judge.verdict(readings, variant)
    assert not judged.passed.any()
    np.testing.assert_allclose(judged.score, (1 - probabilities[:, 2]) / 2, atol=1e-12)


def _damaged(folder, tmp_path, remove=(), add=()):
    copy = tmp_path / "clip"
    shutil.copytree(folder, copy)
    for name in remove:
        (copy / name).unlink()
    for name in add:
        (copy / name).write_bytes(b"")
    return copy


@pytest.mark.parametrize("remove, add, named", [
    (["config.json"], [], "config.json"),
    (["model.safetensors"], [], "model.safetensors"),
    (["model.safetensors"], ["pytorch_model.bin"], "pytorch_model.bin is a pickle"),
    (["merges.txt"], [], "merges.txt"),
    (["vocab.json"], [], "vocab.json"),
    (["preprocessor_config.json"], [], "preprocessor_config.json"),
])
def test_a_missing_file_is_one_line_naming_it(clip_folder, tmp_path, remove, add, named):
    folder, _ = clip_folder
    with pytest.raises(TunelabError) as error:
        ClipJudge(_damaged(folder, tmp_path, remove, add), device="cpu")
    message = str(error.value)
    assert named in message and "\n" not in message


def test_a_missing_folder_a_non_clip_config_and_weights_short_of_the_config_are_refused(clip_folder, tmp_path):
    folder, _ = clip_folder
    with pytest.raises(TunelabError, match="no such folder"):
        ClipJudge(tmp_path / "nowhere")

    copy = _damaged(folder, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 3  # one more layer than the weights hold
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(TunelabError, match="lacks .* weights") as error:
        ClipJudge(copy, device="cpu")
    assert "\n" not in str(error.value)

    (copy / "config.json").write_text(json.dumps({**config, "model_type": "clip_text_model"}))
    with pytest.raises(TunelabError, match="not 'clip'"):
        ClipJudge(copy, device="cpu")


def test_check_names_what_the_expectation_lacks(clip_folder):
    folder, _ = clip_folder
    judge = ClipJudge(folder, device="cpu")
    assert "text" in judge.check(Expectation(alternatives=("a photo",)))
    assert "text" in judge.check(Expectation(text="  ", alternatives=("a photo",)))
    assert "alternatives" in judge.check(Expectation(text="a red square"))
    assert "alternatives" in judge.check(Expectation(tags=("red square",), text="a red square"))
    assert "two alternatives" in judge.check(Expectation(text="a star", alternatives=("a photo", "A photo")))
    assert "CLIP tokens" in judge.check(Expectation(text=" ".join(["red"] * 80), alternatives=("a photo",)))
    assert judge.check(Expectation(text="a red square", alternatives=("a photo", "a picture"))) is None
    with pytest.raises(TunelabError, match="alternatives"):
        judge.verdict(judge.read(_images(1)), Expectation(text="a red square"))


def test_readings_do_not_depend_on_batching(clip_folder):
    folder, _ = clip_folder
    images = _images(5, size=(48, 40), seed=1)  # not the model's size: resize and centre crop run
    batched = ClipJudge(folder, device="cpu", batch_size=3).read(images)
    one_by_one = ClipJudge(folder, device="cpu", batch_size=1).read(images)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    assert ClipJudge(folder, device="cpu").read([]).shape == (0, 16)
