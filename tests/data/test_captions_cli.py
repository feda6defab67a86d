"""`tunelab captions CONFIG --preview N` on a real prepared index, through the typer app."""

from tiny_dataset import make_dataset
from typer.testing import CliRunner

from tunelab.cli import app

DATA_TOML = """
[data]
index = "index.sqlite"
sources = [{ type = "folder", path = "images" }]
buckets = { resolution = 32, step = 8, min_side = 16, max_side = 64 }
images = { min_side = 16 }
[data.captions]
quality_position = "front"
shuffle_caption = true
keep_tokens = 1
"""


def test_preview_prints_raw_and_processed_prompts(tmp_path):
    make_dataset(tmp_path, 5, tags_of=lambda i: f"tag_{i}, best_quality, long_hair, astolfo_\\(fate\\)")
    (tmp_path / "run.toml").write_text(DATA_TOML)
    result = CliRunner().invoke(app, ["captions", str(tmp_path / "run.toml"), "--preview", "3", "--epoch", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "refused: captions change from epoch to epoch (shuffle_caption)" in out
    assert out.count("  prompt:  ") == 3 and "img003" not in out
    prompts = [line.split("prompt:  ")[1] for line in out.splitlines() if "prompt:  " in line]
    for i, prompt in enumerate(prompts):
        tags = prompt.split(", ")
        assert tags[:2] == ["best quality", f"tag {i}"]  # quality front, then the kept token
        assert sorted(tags[2:]) == ["astolfo (fate)", "long hair"]
    assert "  tags:    tag_0, best_quality, long_hair, astolfo_\\(fate\\)" in out
    assert "→ 1 chunk of 75" in out


def test_preview_without_index_is_a_one_line_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "run.toml").write_text(DATA_TOML)
    result = CliRunner().invoke(app, ["captions", str(tmp_path / "run.toml")])
    assert result.exit_code != 0 and "run `tunelab prepare` first" in str(result.exception)
