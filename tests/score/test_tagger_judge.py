"""The WD tagger judge on tiny ONNX models this test exports in the WD layout. The model's outputs are fixed
functions of chosen pixels and channels, so each output says whether the judge prepared the image the way the
published taggers expect: padded to a white square with the image centred, BGR order, the model's own input size."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tunelab.errors import TunelabError
from tunelab.score.judges.base import Expectation
from tunelab.score.judges.tagger import TaggerJudge, preprocess, tag_key

SIZE = 64  # not the published 448: the judge must read it from the model
TAGS = [  # (name as the CSV writes it, category)
    ("general", 9),
    ("white_padding", 0),  # mean of the top eighth of the input, all channels
    ("red_centre", 0),  # channel 2 (R in BGR) in the centre
    ("blue_centre", 0),  # channel 0 (B in BGR) in the centre
    ("long_hair", 0),  # constant 0.6
    ("astolfo_\\(fate\\)", 4),  # constant 0.6, a character tag
]


class PixelProbe(nn.Module):
    """NHWC BGR 0–255 → one value per tag of TAGS; `logits` returns log-odds instead of probabilities."""

    def __init__(self, logits: bool = False):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        x = x / 255.0
        c = SIZE // 2
        top = x[:, : SIZE // 8].mean(dim=(1, 2, 3))
        red = x[:, c - 4 : c + 4, c - 4 : c + 4, 2].mean(dim=(1, 2))
        blue = x[:, c - 4 : c + 4, c - 4 : c + 4, 0].mean(dim=(1, 2))
        const = torch.full_like(top, 0.6)
        p = torch.stack([torch.ones_like(top), top, red, blue, const, const], dim=1).clamp(0.001, 0.999)
        return torch.log(p / (1 - p)) if self.logits else p


def write_tagger(folder, logits: bool = False, fixed_batch: bool = False, tags=TAGS):
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, SIZE, SIZE, 3)
    dynamic = None if fixed_batch else {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PixelProbe(logits), (example,), str(folder / "model.onnx"), input_names=["input"],
                          output_names=["output"], dynamic_axes=dynamic, dynamo=False)
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},{100 - i}" for i, (name, cat) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return write_tagger(tmp_path_factory.mktemp("tagger"))


def red_band() -> Image.Image:
    """32 wide, 16 high, pure red: padded, its top and bottom quarters are white and its middle red."""
    return Image.new("RGB", (32, 16), (255, 0, 0))


def test_preprocessing_pads_white_keeps_the_image_centred_and_feeds_bgr_at_the_models_size(tagger_dir):
    judge = TaggerJudge(tagger_dir)
    assert judge.input_size == SIZE
    transparent = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))  # transparent pixels are composited on white
    transparent.paste((255, 0, 0, 255), (16, 16, 48, 48))
    readings = judge.read([red_band(), transparent, Image.new("RGB", (20, 20), (0, 0, 255))])
    assert readings.probabilities.shape == (3, len(TAGS))
    assert readings.tags == [name for name, _ in TAGS]
    p = {name: readings.probabilities[:, i] for i, (name, _) in enumerate(TAGS)}
    # white square padding (stretching the band would make the top red, 1/3; black padding, 0)
    np.testing.assert_allclose(p["white_padding"][:2], 1.0, atol=0.01)
    # the band stays in the middle, and its red arrives in channel 2, blue in channel 0 (BGR)
    np.testing.assert_allclose(p["red_centre"], [1.0, 1.0, 0.0], atol=0.01)
    np.testing.assert_allclose(p["blue_centre"], [0.0, 0.0, 1.0], atol=0.01)
    # the arrays the model got: the third image (square, 20 px) resized to the model's size
    assert preprocess(Image.new("RGB", (20, 20), (0, 0, 255)), SIZE).shape == (SIZE, SIZE, 3)
    assert preprocess(Image.new("RGB", (20, 20), (0, 0, 255)), SIZE)[0, 0].tolist() == [255.0, 0.0, 0.0]


def test_category_thresholds_and_tag_names_in_any_spelling(tagger_dir):
    judge = TaggerJudge(tagger_dir)
    images = [red_band(), red_band()]
    readings = judge.read(images)
    # both constant 0.6: a general tag passes the general 0.35, a character tag fails the character 0.85
    for spelling in ("long_hair", "long hair", "Long Hair"):
        judged = judge.verdict(readings, Expectation(tags=(spelling,)))
        assert judged.passed.tolist() == [True, True]
        np.testing.assert_allclose(judged.score, 0.6, atol=1e-4)
    for spelling in ("astolfo_\\(fate\\)", "astolfo (fate)", "astolfo_(fate)", "astolfo \\(fate\\)"):
        assert judge.verdict(readings, Expectation(tags=(spelling,))).passed.tolist() == [False, False]
    # user-set thresholds: per category and per tag (any spelling)
    lenient = TaggerJudge(tagger_dir, character_threshold=0.5)
    assert lenient.verdict(readings, Expectation(tags=("astolfo (fate)",))).passed.all()
    strict = TaggerJudge(tagger_dir, tag_thresholds={"long hair": 0.7})
    assert not strict.verdict(readings, Expectation(tags=("long_hair",))).passed.any()
    # every expected tag present and no absent one; score = min(expected, 1 - absent)
    both = judge.verdict(readings, Expectation(tags=("red_centre", "long hair"), absent=("blue centre",)))
    assert both.passed.all()
    np.testing.assert_allclose(both.score, 0.6, atol=1e-4)
    absent_present = judge.verdict(readings, Expectation(tags=("long hair",), absent=("red centre",)))
    assert not absent_present.passed.any()
    np.testing.assert_allclose(absent_present.score, 0.0, atol=0.01)


def test_logit_outputs_are_turned_into_probabilities(tmp_path, tagger_dir):
    images = [red_band(), Image.new("RGB", (20, 20), (0, 0, 255))]
    from_logits = TaggerJudge(write_tagger(tmp_path / "logits", logits=True)).read(images)
    from_probabilities = TaggerJudge(tagger_dir).read(images)
    np.testing.assert_allclose(from_logits.probabilities, from_probabilities.probabilities, atol=1e-4)


def test_a_model_with_a_fixed_batch_of_one_reads_any_number_of_images(tmp_path, tagger_dir):
    judge = TaggerJudge(write_tagger(tmp_path / "fixed", fixed_batch=True), batch_size=8)
    images = [red_band()] * 3 + [Image.new("RGB", (20, 20), (0, 0, 255))]
    readings = judge.read(images)
    expected = TaggerJudge(tagger_dir).read(images)
    np.testing.assert_allclose(readings.probabilities, expected.probabilities, atol=1e-5)
    assert judge.read([]).probabilities.shape == (0, len(TAGS))


def test_check_names_unknown_tags_and_their_closest_known_ones(tagger_dir):
    judge = TaggerJudge(tagger_dir)
    assert judge.check(Expectation(tags=("long hair", "astolfo (fate)"))) is None
    assert "no tags" in judge.check(Expectation()) or "needs tags" in judge.check(Expectation())
    reason = judge.check(Expectation(tags=("long hair",), absent=("long_hiar",)))
    assert "'long_hiar'" in reason and "long_hair" in reason and "selected_tags.csv" in reason
    with pytest.raises(TunelabError, match="long_hiar"):
        TaggerJudge(tagger_dir, tag_thresholds={"long_hiar": 0.5})


@pytest.mark.parametrize("missing", ["selected_tags.csv", "model.onnx"])
def test_a_missing_file_is_one_line_naming_it(tmp_path, missing):
    folder = write_tagger(tmp_path / "t")
    (folder / missing).unlink()
    with pytest.raises(TunelabError) as error:
        TaggerJudge(folder)
    message = str(error.value)
    assert str(folder / missing) in message and "\n" not in message


def test_a_missing_folder_and_a_tag_list_without_its_columns_are_one_line(tmp_path):
    with pytest.raises(TunelabError, match="no such tagger folder"):
        TaggerJudge(tmp_path / "nowhere")
    folder = write_tagger(tmp_path / "t")
    (folder / "selected_tags.csv").write_text("id,tag\n0,long_hair\n")
    with pytest.raises(TunelabError, match="selected_tags.csv: no column name, category"):
        TaggerJudge(folder)
    folder = write_tagger(tmp_path / "u", tags=TAGS[:-1])  # one tag fewer than the model outputs
    with pytest.raises(TunelabError, match="outputs 6 tags but selected_tags.csv lists 5"):
        TaggerJudge(folder)


def test_tag_key_reads_the_common_spellings_as_one():
    assert tag_key("long_hair") == tag_key("long hair") == tag_key(" Long  Hair ")
    assert tag_key("astolfo_\\(fate\\)") == tag_key("astolfo (fate)") == tag_key("astolfo_(fate)")
    assert tag_key("long_hair") != tag_key("short_hair")
