"""The `[data]` table of a run config: where the images come from, how they are checked, split and bucketed.

Paths are relative to the TOML file's folder; `load_data_config` resolves them to absolute paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from tunelab.config import StrictModel, describe_validation_error, read_toml
from tunelab.data.cache_config import CacheConfig
from tunelab.data.caption_config import CaptionConfig
from tunelab.errors import fail

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jxl")


class BucketConfig(StrictModel):
    """Area-preserving aspect buckets (SDXL style). For tiny models e.g. resolution 32, step 8, min_side 16.

    `resolution` is a side (area = side²) or [width, height] (area = width × height, as sd-scripts' "1024,768");
    the square bucket is the largest multiple of `step` whose area fits. `upscale = false` is sd-scripts'
    `bucket_no_upscale`: each image's bucket is its own size (shrunk to the area if larger) rounded down to `step`."""

    enabled: bool = True
    resolution: int | tuple[int, int] = 1024  # target area = resolution² (or width × height)
    step: int = Field(64, ge=1)
    min_side: int = Field(512, ge=1)
    max_side: int = Field(2048, ge=1)
    max_aspect: float = Field(4.0, ge=1.0)
    upscale: bool = True

    @field_validator("resolution")
    @classmethod
    def _square_as_side(cls, value):
        """[1024, 1024] is 1024: code that needs only the area keeps reading one number for square targets."""
        return value[0] if isinstance(value, tuple) and value[0] == value[1] else value

    @model_validator(mode="after")
    def _sides_fit(self):
        width, height = self.size
        if min(width, height) < 8:
            raise ValueError("resolution must be at least 8")
        if self.min_side > self.max_side:
            raise ValueError("min_side must be <= max_side")
        if self.min_side > min(width, height) or self.max_side < max(width, height):
            raise ValueError("resolution must lie between min_side and max_side")
        if self.min_side % self.step:
            raise ValueError("min_side must be a multiple of step")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the target resolution."""
        return (self.resolution, self.resolution) if isinstance(self.resolution, int) else tuple(self.resolution)

    def smallest_side(self) -> int:
        """The smallest bucket side an image can land in (what the default too-small check is derived from)."""
        return self.min_side if self.upscale else self.step


class FolderSource(StrictModel):
    """A folder of images with optional sidecars next to each image: `.txt` (tags), `.caption`, `.json`.

    With `repeat_folders`, a subfolder named `N_name` (DreamBooth / sd-scripts style) repeats its images N times."""

    type: Literal["folder"]
    path: Path
    repeats: int = Field(1, ge=1)
    is_reg: bool = False
    recursive: bool = True
    repeat_folders: bool = True
    tags_extension: str | None = ".txt"
    caption_extension: str | None = ".caption"
    json_sidecar: bool = True
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    # Caption options carried to the caption stage per item group (sd-scripts subset keys such as keep_tokens).
    caption_options: dict = Field(default_factory=dict)
    buckets: BucketConfig | None = None  # this source's own buckets; None: the run's [data.buckets]


class KohyaMetadataSource(StrictModel):
    """An sd-scripts `in_json` file (`meta_lat.json`): {image_key: {caption, tags, train_resolution}}.

    Keys are image paths, or file stems looked up in `image_dir` (default: the JSON file's folder)."""

    type: Literal["kohya_metadata"]
    path: Path
    image_dir: Path | None = None
    repeats: int = Field(1, ge=1)
    is_reg: bool = False
    caption_options: dict = Field(default_factory=dict)
    buckets: BucketConfig | None = None  # this source's own buckets; None: the run's [data.buckets]


class KohyaDatasetConfigSource(StrictModel):
    """An sd-scripts dataset-config TOML: `[general]`, `[[datasets]]`, `[[datasets.subsets]]` (see
    `data/kohya_dataset_config.py`). Each subset gets its dataset's buckets; the run's [data.buckets] does not apply.

    `command_line`: sd-scripts options given on its command line (`resolution`, `enable_bucket`, `shuffle_caption`,
    …, named as in the dataset config): the fallback below `[general]`, as sd-scripts uses them."""

    type: Literal["kohya_dataset_config"]
    path: Path
    command_line: dict = Field(default_factory=dict)


Source = Annotated[Union[FolderSource, KohyaMetadataSource, KohyaDatasetConfigSource], Field(discriminator="type")]


class SplitConfig(StrictModel):
    """Held-out validation items: a fraction chosen by content hash (stable across runs and machines), or a folder."""

    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    validation_folder: Path | None = None
    salt: str = ""  # change it to hold out a different (still deterministic) subset


class ImageChecks(StrictModel):
    """What makes an image unusable (skipped with a reason) at prepare time."""

    # Pillow raises DecompressionBombError above 2 × its default MAX_IMAGE_PIXELS (89,478,485): same default here.
    max_pixels: int = Field(178_956_970, ge=1)
    min_side: int | None = Field(None, ge=1)  # None: a quarter of the smallest bucket side, at least 8 pixels
    # GIF frames are 256-colour dithered and first frames are often blank/title cards: skip by default.
    animated: Literal["skip", "first_frame"] = "skip"
    require_caption: bool = False  # skip items with neither tags nor caption


class DataConfig(StrictModel):
    index: Path = Path("dataset_index.sqlite")
    sources: list[Source] = Field(min_length=1)
    split: SplitConfig = Field(default_factory=SplitConfig)
    buckets: BucketConfig = Field(default_factory=BucketConfig)
    images: ImageChecks = Field(default_factory=ImageChecks)
    batch_rows: int = Field(1000, ge=1)  # rows per index transaction
    workers: int = Field(1, ge=0)  # processes decoding images at prepare time; 0 = one per CPU core
    # --- caption policy (data/captions.py) goes below this line ---
    captions: CaptionConfig = Field(default_factory=CaptionConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    def image_checks(self, buckets: BucketConfig | None = None) -> ImageChecks:
        """The checks prepare applies to an image bucketed by `buckets` (default: the run's), with the default
        minimum side filled in from them (an image upscaled more than 4× to reach the smallest bucket teaches blur;
        a 1×1 image teaches nothing)."""
        if self.images.min_side is not None:
            return self.images
        return self.images.model_copy(update={"min_side": max(8, (buckets or self.buckets).smallest_side() // 4)})

    def resolved(self, base_dir: Path) -> "DataConfig":
        """A copy with every relative path made absolute against `base_dir` (the TOML file's folder)."""
        base_dir = Path(base_dir).resolve()

        def absolute(p: Path | None) -> Path | None:
            return None if p is None else (base_dir / p).resolve()

        sources = []
        for s in self.sources:
            update = {"path": absolute(s.path)}
            if isinstance(s, KohyaMetadataSource) and s.image_dir is not None:
                update["image_dir"] = absolute(s.image_dir)
            sources.append(s.model_copy(update=update))
        split = self.split.model_copy(update={"validation_folder": absolute(self.split.validation_folder)})
        return self.model_copy(update={"index": absolute(self.index), "sources": sources, "split": split,
                                       "captions": self.captions.resolved(base_dir), "cache": self.cache.resolved(base_dir)})


def load_data_config(path: str | Path) -> DataConfig:
    """Read the `[data]` table of a run config, with paths resolved against the config's folder.

    An sd-scripts dataset-config TOML (`[[datasets]]`, no `[data]`) is accepted as it is: its subsets are the
    sources, the index next to it, captions taken as written (no tag normalisation, as sd-scripts).

    A run config's `train.batch_size` is handed to its sd-scripts dataset configs, whose `batch_size` must agree."""
    path = Path(path)
    raw = read_toml(path)
    table = raw.get("data")
    if table is None and isinstance(raw.get("datasets"), list):
        table = {"index": f"{path.stem}_index.sqlite", "sources": [{"type": "kohya_dataset_config", "path": path.name}],
                 "captions": {"underscores": "keep", "parentheses": "keep", "deduplicate": False}}
    if not isinstance(table, dict):
        raise fail(path, "no [data] table")
    try:
        config = DataConfig.model_validate(table)
    except ValidationError as e:
        raise fail(path, f"data.{describe_validation_error(e)}") from None
    if isinstance(raw.get("train"), dict):
        config = _with_run_batch_size(config, raw["train"])
    return config.resolved(path.parent)


def _with_run_batch_size(config: DataConfig, train: dict) -> DataConfig:
    from tunelab.train.config import TrainConfig  # the train table owns the batch size and its default

    batch_size = train.get("batch_size", TrainConfig.model_fields["batch_size"].default)
    sources = [s.model_copy(update={"command_line": {**s.command_line, "batch_size": batch_size}})
               if isinstance(s, KohyaDatasetConfigSource) else s for s in config.sources]
    return config.model_copy(update={"sources": sources})
