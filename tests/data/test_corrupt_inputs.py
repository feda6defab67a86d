"""Bad inputs built on the fly: each is skipped with its reason or accepted with a conversion; prepare exits 0."""

import numpy as np
import pytest
from make_images import encoded, noise_image, png_header_only, write_image
from PIL import Image
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.config import ImageChecks, load_data_config
from tunelab.data.images import inspect_image, load_rgb
from tunelab.data.index import DatasetIndex
from tunelab.data.prepare import report_paths

EXPECTED = {  # file → (status, skip reason or a note the accepted row must carry)
    "good.png": ("ok", None),
    "zero_bytes.png": ("skipped", "empty_file"),
    "truncated.jpg": ("skipped", "truncated"),
    "truncated.png": ("skipped", "truncated"),
    "text_as.png": ("skipped", "not_an_image"),
    "cmyk.jpg": ("ok", "cmyk_to_rgb"),
    "sixteen_bit.png": ("ok", "16bit_to_8bit"),
    "palette_transparent.png": ("ok", "alpha_on_white"),
    "animated.gif": ("skipped", "animated"),
    "one_pixel.png": ("skipped", "too_small"),
    "bomb_30000.png": ("skipped", "too_many_pixels"),
    "png_named.jpg": ("ok", "extension_mismatch:png_as_jpg"),
    "latin1_caption.png": ("skipped", "caption_not_utf8"),
    "empty_caption.png": ("ok", "empty_caption"),
    "missing_caption.png": ("ok", "no_caption"),
}


def _build(folder):
    folder.mkdir()
    write_image(folder / "good.png", 64, 48)
    (folder / "good.txt").write_text("1girl, solo")
    (folder / "zero_bytes.png").write_bytes(b"")
    jpeg, png = encoded(noise_image(64, 48), "JPEG"), encoded(noise_image(64, 48), "PNG")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text_as.png").write_text("hello, I am not an image")
    noise_image(64, 48, mode="CMYK").save(folder / "cmyk.jpg")
    sixteen = np.full((48, 64), 0x8000, dtype=np.uint16)  # mid grey in 16 bits
    Image.fromarray(sixteen).save(folder / "sixteen_bit.png")
    palette = noise_image(64, 48).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.putpixel((0, 0), 0)
    palette.save(folder / "palette_transparent.png", transparency=0)
    frames = [noise_image(64, 48, seed=s) for s in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    write_image(folder / "one_pixel.png", 1, 1)
    (folder / "bomb_30000.png").write_bytes(png_header_only(30000, 30000))
    write_image(folder / "png_named.jpg", 64, 48, format="PNG")
    write_image(folder / "latin1_caption.png", 64, 48)
    (folder / "latin1_caption.caption").write_bytes("café au lait".encode("latin-1"))
    write_image(folder / "empty_caption.png", 64, 48)
    (folder / "empty_caption.caption").write_text("  \n")
    write_image(folder / "missing_caption.png", 64, 48)


def _prepare(tmp_path, images_table="", workers=1):  # default checks: min side 8 from the tiny buckets
    (tmp_path / "run.toml").write_text(
        f'[data]\nindex = "out/index.sqlite"\nworkers = {workers}\nsources = [{{type = "folder", path = "bad"}}]\n'
        f'buckets = {{resolution = 32, step = 8, min_side = 16, max_side = 64}}\nimages = {{{images_table}}}\n'
    )
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "run.toml"), "--quiet"])
    assert result.exit_code == 0 or "0 train items" in str(result.exception), result.output  # an error (exit 2)
    config = load_data_config(tmp_path / "run.toml")
    with DatasetIndex(config.index) as index:
        return {it.path.rsplit("/", 1)[1]: it for it in index.iter_items(split=None, status=None)}, config


def test_every_bad_input_is_skipped_or_converted_with_its_reason(tmp_path):
    _build(tmp_path / "bad")
    rows, config = _prepare(tmp_path)
    assert set(rows) == set(EXPECTED)
    for name, (status, reason_or_note) in EXPECTED.items():
        row = rows[name]
        assert row.status == status, (name, row)
        if status == "skipped":
            assert row.skip_reason == reason_or_note, (name, row)
        else:
            assert row.width == 64 and row.height == 48 and row.bucket == (40, 24), (name, row)  # 4:3 → nearest 5:3
            assert reason_or_note is None or reason_or_note in row.note.split("; "), (name, row.note)
    assert rows["good.png"].note is None and rows["good.png"].tags == "1girl, solo"
    assert rows["empty_caption.png"].caption == "" and rows["missing_caption.png"].caption is None

    report = report_paths(config.index)[1].read_text().splitlines()
    skipped = {n for n, (s, _) in EXPECTED.items() if s == "skipped"}
    assert sorted(line.split("\t")[1].rsplit("/", 1)[1] for line in report if not line.startswith("#")) == sorted(skipped)


def test_accepted_conversions_give_the_right_pixels(tmp_path):
    _build(tmp_path / "bad")
    cmyk = load_rgb(tmp_path / "bad" / "cmyk.jpg")
    grey = load_rgb(tmp_path / "bad" / "sixteen_bit.png")
    palette = load_rgb(tmp_path / "bad" / "palette_transparent.png")
    assert cmyk.mode == grey.mode == palette.mode == "RGB"
    assert np.asarray(grey).min() == np.asarray(grey).max() == 0x80  # 16-bit mid grey → 8-bit 128, not clipped white
    assert palette.getpixel((0, 0)) == (255, 255, 255)  # transparent → white background
    assert np.asarray(palette).std() > 20  # the opaque pixels keep their colours
    original = np.asarray(noise_image(64, 48, mode="CMYK").convert("RGB"), dtype=float)
    assert np.abs(np.asarray(cmyk, dtype=float) - original).mean() < 25  # JPEG-lossy, but the same picture


@pytest.mark.parametrize("images_table, name, reason", [
    ('min_side = 8, animated = "first_frame"', "animated.gif", None),
    ("min_side = 8, max_pixels = 2000", "good.png", "too_many_pixels"),
    ("min_side = 8, require_caption = true", "missing_caption.png", "no_caption"),
])  # fmt: skip
def test_image_checks_are_configurable(tmp_path, images_table, name, reason):
    _build(tmp_path / "bad")
    rows, _ = _prepare(tmp_path, images_table)
    assert rows[name].skip_reason == reason
    if reason is None:
        assert rows[name].status == "ok" and "animated_first_frame" in rows[name].note


def test_a_process_pool_gives_the_same_rows(tmp_path):
    _build(tmp_path / "bad")
    serial, config = _prepare(tmp_path)
    config.index.unlink()
    pooled, _ = _prepare(tmp_path, workers=2)
    facts = lambda rows: {n: (r.status, r.skip_reason, r.content_hash, r.width, r.note) for n, r in rows.items()}  # noqa: E731
    assert facts(pooled) == facts(serial)


def test_exif_orientation_is_applied_to_the_recorded_size_and_the_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90° (a phone photo held upright)
    noise_image(64, 48).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    facts = inspect_image(tmp_path / "rotated.jpg", ImageChecks(min_side=8))
    assert (facts.width, facts.height) == (48, 64)
    assert load_rgb(tmp_path / "rotated.jpg").size == (48, 64)


def test_default_minimum_side_follows_the_buckets():
    from tunelab.data.config import DataConfig

    sources = [{"type": "folder", "path": "x"}]
    assert DataConfig(sources=sources).image_checks().min_side == 128  # SDXL buckets: smallest side 512
    tiny = DataConfig(sources=sources, buckets={"resolution": 32, "step": 8, "min_side": 16, "max_side": 64})
    assert tiny.image_checks().min_side == 8  # a 32×32 toy image passes, a 1×1 does not
    assert DataConfig(sources=sources, images={"min_side": 3}).image_checks().min_side == 3
