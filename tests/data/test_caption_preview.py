"""`tunelab captions` header and empty preview: `--preview 0` says how many items there are instead of "no usable
items", and with trained text encoders the text-embedding cache is said to be unused, not "refused"."""

from tiny_dataset import make_dataset
from typer.testing import CliRunner

from tunelab.cli import app

DATA_TOML = """
[text_encoder]
mode = "{mode}"
[data]
index = "index.sqlite"
sources = [{{ type = "folder", path = "images" }}]
buckets = {{ resolution = 32, step = 8, min_side = 16, max_side = 64 }}
images = {{ min_side = 16 }}
"""


def captions(tmp_path, mode, *args):
    (tmp_path / "run.toml").write_text(DATA_TOML.format(mode=mode))
    result = CliRunner().invoke(app, ["captions", str(tmp_path / "run.toml"), *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output.splitlines()


def test_preview_zero_counts_the_items_and_trained_encoders_need_no_cache(tmp_path):
    make_dataset(tmp_path, 5)
    lines = captions(tmp_path, "on", "--preview", "0")
    assert lines == ["text-embedding cache: not used (text encoders train: text_encoder.mode = 'on')",
                     "--preview 0: none shown of 5 usable items in split 'train'"]
    frozen = captions(tmp_path, "off", "--preview", "1")
    assert frozen[0] == "text-embedding cache (text encoders frozen): allowed"
    assert sum(line.startswith("  prompt:  ") for line in frozen) == 1
