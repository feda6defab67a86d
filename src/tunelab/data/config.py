"""The `[data]` table of a run config: where the images come from, how they are checked, split and bucketed.

Paths are relative to the TOML file's folder; `load_data_config` resolves them to absolute paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationError, model_validator

from tunelab.config import StrictModel, describe_validation_error, read_toml
from tunelab.data.cache_config import CacheConfig
from tunelab.data.caption_config import CaptionConfig
from tunelab.errors import fail

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".jxl")


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


class KohyaMetadataSource(StrictModel):
    """An sd-scripts `in_json` file (`meta_lat.json`): {image_key: {caption, tags, train_resolution}}.

    Keys are image paths, or file stems looked up in `image_dir` (default: the JSON file's folder)."""

    type: Literal["kohya_metadata"]
    path: Path
    image_dir: Path | None = None
    repeats: int = Field(1, ge=1)
    is_reg: bool = False
    caption_options: dict = Field(default_factory=dict)


class KohyaDatasetConfigSource(StrictModel):
    """An sd-scripts dataset-config TOML: `[general]`, `[[datasets]]`, `[[datasets.subsets]]`."""

    type: Literal["kohya_dataset_config"]
    path: Path


Source = Annotated[Union[FolderSource, KohyaMetadataSource, KohyaDatasetConfigSource], Field(discriminator="type")]


class SplitConfig(StrictModel):
    """Held-out validation items: a fraction chosen by content hash (stable across runs and machines), or a folder."""

    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    validation_folder: Path | None = None
    salt: str = ""  # change it to hold out a different (still deterministic) subset


class BucketConfig(StrictModel):
    """Area-preserving aspect buckets (SDXL style). For tiny models e.g. resolution 32, step 8, min_side 16."""

    enabled: bool = True
    resolution: int = Field(1024, ge=8)  # target area = resolution²
    step: int = Field(64, ge=1)
    min_side: int = Field(512, ge=1)
    max_side: int = Field(2048, ge=1)
    max_aspect: float = Field(4.0, ge=1.0)

    @model_validator(mode="after")
    def _sides_fit(self):
        if self.min_side > self.max_side:
            raise ValueError("min_side must be <= max_side")
        if self.min_side > self.resolution or self.max_side < self.resolution:
            raise ValueError("resolution must lie between min_side and max_side")
        if self.resolution % self.step or self.min_side % self.step:
            raise ValueError("resolution and min_side must be multiples of step")
        return self


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

    def image_checks(self) -> ImageChecks:
        """The checks prepare applies, with the default minimum side filled in from the buckets (an image upscaled
        more than 4× to reach the smallest bucket teaches blur; a 1×1 image teaches nothing)."""
        if self.images.min_side is not None:
            return self.images
        return self.images.model_copy(update={"min_side": max(8, self.buckets.min_side // 4)})

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
    sources, with default settings and the index next to it."""
    path = Path(path)
    raw = read_toml(path)
    table = raw.get("data")
    if table is None and isinstance(raw.get("datasets"), list):
        table = {"index": f"{path.stem}_index.sqlite", "sources": [{"type": "kohya_dataset_config", "path": path.name}]}
    if not isinstance(table, dict):
        raise fail(path, "no [data] table")
    try:
        config = DataConfig.model_validate(table)
    except ValidationError as e:
        raise fail(path, f"data.{describe_validation_error(e)}") from None
    return config.resolved(path.parent)
