"""sd-scripts' dataset config TOML (`--dataset_config`): `[general]`, `[[datasets]]`, `[[datasets.subsets]]`.

Every key sd-scripts accepts is in `KEYS` with what tunelab does with it: honoured with sd-scripts' meaning, or
refused with one line naming the key and why. A key is never read and dropped. Values resolve as sd-scripts
resolves them: subset < dataset < `[general]` < the command line (`KohyaDatasetConfigSource.command_line`) < its
default. Each `[[datasets.subsets]]` becomes one tunelab source carrying its dataset's buckets and its caption
options. Paths are relative to the TOML's folder.

Facts (key names, levels, defaults) follow sd-scripts' `library/config_util.py` and `train_util.py`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunelab.config import read_toml
from tunelab.data.config import BucketConfig, FolderSource, KohyaDatasetConfigSource, KohyaMetadataSource
from tunelab.errors import fail

SUBSET, DATASET = "subset", "dataset"  # the innermost level a key may be written at (sd-scripts' schema)


@dataclass(frozen=True)
class Key:
    """One sd-scripts dataset-config key: its value type, its sd-scripts default, the innermost level it may be
    written at (`SUBSET` keys may also sit in [[datasets]] and [general]; `subset_only` keys only in a subset),
    and what tunelab does: "layout" / "buckets" / "caption" / "check" (honoured), or a refusal (`refused`) that
    applies when the value differs from sd-scripts' default."""

    type: type | tuple[type, ...]
    default: Any = None
    level: str = SUBSET
    use: str = "caption"
    subset_only: bool = False
    refused: str = ""


_AUGMENT = "tunelab has no image augmentation (every epoch sees the same crop)"
KEYS: dict[str, Key] = {
    # --- where the images are ---
    "image_dir": Key(str, None, use="layout", subset_only=True),
    "metadata_file": Key(str, None, use="layout", subset_only=True),
    "is_reg": Key(bool, False, use="layout", subset_only=True),
    "num_repeats": Key(int, 1, use="layout"),
    "caption_extension": Key(str, ".caption", use="layout"),
    "recursive": Key(bool, False, use="layout"),  # tunelab's own: also read subfolders of image_dir
    "cache_info": Key(bool, False, use="check"),  # sd-scripts' image-size cache: tunelab's index is one
    # --- caption policy (data/caption_config.py), same names ---
    "shuffle_caption": Key(bool, False),
    "keep_tokens": Key(int, 0),
    "keep_tokens_separator": Key(str, ""),
    "secondary_separator": Key(str, None),
    "caption_separator": Key(str, ","),  # only "," (see _caption_separator)
    "enable_wildcard": Key(bool, False),
    "caption_prefix": Key(str, None),
    "caption_suffix": Key(str, None),
    "caption_dropout_rate": Key((int, float), 0.0),
    "caption_dropout_every_n_epochs": Key(int, 0),
    "caption_tag_dropout_rate": Key((int, float), 0.0),
    "class_tokens": Key(str, None),
    # --- buckets, per dataset (tunelab also takes them per subset) ---
    "resolution": Key((int, list, str), None, level=DATASET, use="buckets"),
    "enable_bucket": Key(bool, False, level=DATASET, use="buckets"),
    "min_bucket_reso": Key(int, 256, level=DATASET, use="buckets"),
    "max_bucket_reso": Key(int, 1024, level=DATASET, use="buckets"),
    "bucket_reso_steps": Key(int, 64, level=DATASET, use="buckets"),
    "bucket_no_upscale": Key(bool, False, level=DATASET, use="buckets"),
    "batch_size": Key(int, 1, level=DATASET, use="check"),  # must agree with train.batch_size
    # --- refused when set to anything but sd-scripts' default ---
    "color_aug": Key(bool, False, refused=_AUGMENT),
    "flip_aug": Key(bool, False, refused=_AUGMENT),
    "random_crop": Key(bool, False, refused=_AUGMENT + "; crops are centred"),
    "face_crop_aug_range": Key(list, None, refused=_AUGMENT),
    "token_warmup_min": Key(int, 1, refused="tunelab has no caption token warm-up"),
    "token_warmup_step": Key((int, float), 0, refused="tunelab has no caption token warm-up"),
    "custom_attributes": Key(dict, None, refused="only sd-scripts' own custom loss code reads it"),
    "resize_interpolation": Key(str, None, refused="tunelab resizes with one fixed filter"),
    "alpha_mask": Key(bool, False, subset_only=True, refused="tunelab has no masked loss (transparency is composited on white)"),
    "conditioning_data_dir": Key(str, None, subset_only=True, refused="ControlNet datasets are not trained by tunelab"),
    "network_multiplier": Key((int, float), 1.0, level=DATASET, refused="LoRA network multipliers do not apply to a finetune"),
    "validation_split": Key((int, float), 0.0, level=DATASET,
                            refused="tunelab holds out by content hash over all sources: set [data.split] validation_fraction"),
    "validation_seed": Key(int, None, level=DATASET, refused="tunelab's hold-out is seeded by [data.split] salt"),
}  # fmt: skip
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}


def expand_kohya_dataset_config(source: KohyaDatasetConfigSource) -> list[FolderSource | KohyaMetadataSource]:
    """One source per `[[datasets.subsets]]`, in file order, each with its dataset's buckets and caption options."""
    path = Path(source.path)
    config = read_toml(path)
    problem = _Problems(path)
    for table in config:
        if table not in ("general", "datasets"):
            raise problem(table, "unknown table (an sd-scripts dataset config has [general] and [[datasets]])")
    general = config.get("general", {})
    if not isinstance(general, dict):
        raise problem("general", "is not a table")
    _check_keys(general, "general", problem, level=DATASET)
    command_line = dict(source.command_line)
    _check_keys({k: v for k, v in command_line.items() if k != "batch_size"}, "command_line", problem, level=DATASET)
    datasets = config.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise problem("", "no [[datasets]] in dataset config")
    expanded: list[FolderSource | KohyaMetadataSource] = []
    for d, dataset in enumerate(datasets):
        where = f"datasets.{d}"
        subsets = dataset.get("subsets")
        if not isinstance(subsets, list) or not subsets:
            raise problem(where, "no [[datasets.subsets]]")
        _check_keys({k: v for k, v in dataset.items() if k != "subsets"}, where, problem, level=DATASET)
        for s, subset in enumerate(subsets):
            _check_keys(subset, f"{where}.subsets.{s}", problem, level=SUBSET)
            chain = [subset, dataset, general, command_line]
            expanded.append(_subset_source(path, chain, f"{where}.subsets.{s}", problem))
    return expanded


class _Problems:
    """Builds the one-line error `<file>: <where>: <problem>`."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, where: str, problem: str):
        where = where.lstrip(".")  # "" + ".resolution": a key of no table (the command line's flags)
        return fail(self.path, f"{where}: {problem}" if where else problem)


def _check_keys(table: dict, where: str, problem: _Problems, *, level: str) -> None:
    """Unknown keys, keys written at a level sd-scripts does not take them at, wrong types, refused values."""
    for name, value in table.items():
        key = KEYS.get(name)
        if key is None:
            raise problem(f"{where}.{name}", "unknown key (not an sd-scripts dataset-config key)")
        if key.subset_only and level != SUBSET:
            raise problem(f"{where}.{name}", "belongs in a [[datasets.subsets]] table")
        if key.level == DATASET and key.use != "buckets" and level == SUBSET:  # buckets: tunelab takes them per subset
            raise problem(f"{where}.{name}", "belongs in [[datasets]] or [general] (it is the same for a whole dataset)")
        if not _has_type(value, key.type):
            expected = " or ".join(_TYPE_NAMES[t] for t in (key.type if isinstance(key.type, tuple) else (key.type,)))
            raise problem(f"{where}.{name}", f"expected {expected}, got {value!r}")
        if key.refused and value != key.default:
            raise problem(f"{where}.{name}", f"= {value!r} is not supported: {key.refused}")
        if name == "caption_separator" and value.strip() != ",":  # sd-scripts splits captions on it
            raise problem(f"{where}.{name}", f"= {value!r} is not supported: tunelab splits tags on ','")


def _has_type(value, expected) -> bool:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in expected
    return isinstance(value, expected) or (float in expected and isinstance(value, int))


def _resolve(name: str, chain: list[dict]):
    """sd-scripts' fallback: the first table in subset → dataset → general → command line that sets it."""
    for table in chain:
        if table.get(name) is not None:
            return table[name]
    return KEYS[name].default


def _subset_source(path: Path, chain: list[dict], where: str, problem: _Problems) -> FolderSource | KohyaMetadataSource:
    subset = chain[0]
    if "image_dir" not in subset and "metadata_file" not in subset:
        raise problem(where, "needs image_dir or metadata_file")
    common = dict(repeats=_positive(_resolve("num_repeats", chain), f"{where}.num_repeats", problem),
                  is_reg=bool(subset.get("is_reg", False)), caption_options=_caption_options(chain),
                  buckets=_buckets(chain, where, problem))  # fmt: skip
    _check_batch_size(chain, where, problem)
    image_dir = (path.parent / subset["image_dir"]).resolve() if "image_dir" in subset else None
    if "metadata_file" in subset:
        metadata = (path.parent / subset["metadata_file"]).resolve()
        return KohyaMetadataSource(type="kohya_metadata", path=metadata, image_dir=image_dir, **common)
    # sd-scripts reads one text file per image (image stem + caption_extension) and splits it on the separator:
    # that is tunelab's tag text (shuffle, keep_tokens and tag dropout act on it). Nothing else is read.
    extension = "." + str(_resolve("caption_extension", chain)).lstrip(".")
    return FolderSource(type="folder", path=image_dir, recursive=bool(_resolve("recursive", chain)), repeat_folders=False,
                        tags_extension=extension, caption_extension=None, json_sidecar=False, **common)  # fmt: skip


def _positive(value: int, where: str, problem: _Problems) -> int:
    if value < 1:
        raise problem(where, f"must be at least 1, got {value}")
    return value


def _caption_options(chain: list[dict]) -> dict:
    """The caption keys set anywhere in the chain (unset ones leave the run's [data.captions] in charge)."""
    options = {}
    for name, key in KEYS.items():
        if key.use != "caption" or key.refused:
            continue
        value = _resolve(name, chain)
        if name != "caption_separator" and any(table.get(name) is not None for table in chain):
            options[name] = value  # caption_separator is checked to be "," (tunelab's own split) in _check_keys
    return options


def _parse_resolution(value, where: str, problem: _Problems) -> tuple[int, int]:
    """An int, [width, height], or the command line's "1024" / "1024,768"."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",")]
        except ValueError:
            raise problem(f"{where}.resolution", f"expected SIZE or WIDTH,HEIGHT, got {value!r}") from None
        value = value[0] if len(value) == 1 else value
    if isinstance(value, int):
        return value, value
    if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value[0], value[1]
    raise problem(f"{where}.resolution", f"expected SIZE or [WIDTH, HEIGHT], got {value!r}")


def sd_scripts_buckets(settings: dict, source: str) -> BucketConfig:
    """The buckets sd-scripts builds from these settings alone (its training command line's flags)."""
    return _buckets([settings], "", _Problems(Path(source)))


def _buckets(chain: list[dict], where: str, problem: _Problems) -> BucketConfig:
    """The dataset's buckets as sd-scripts builds them (BucketManager / make_bucket_resolutions)."""
    get: Callable[[str], Any] = lambda name: _resolve(name, chain)  # noqa: E731
    if get("resolution") is None:
        raise problem(where, "resolution is not set (sd-scripts needs it in the dataset config or on the command line)")
    width, height = _parse_resolution(get("resolution"), where, problem)
    if min(width, height) < 8:
        raise problem(f"{where}.resolution", f"{width}x{height} is below 8 pixels")
    step = get("bucket_reso_steps")
    if step < 1:
        raise problem(f"{where}.bucket_reso_steps", f"must be at least 1, got {step}")
    if not get("enable_bucket"):  # one bucket: the resolution itself (min/max/steps unused, as in sd-scripts)
        low = max(8, min(width, height)) // 8 * 8
        return BucketConfig(enabled=False, resolution=(width, height), step=8, min_side=low, max_side=max(width, height))
    if get("bucket_no_upscale"):  # each image's own size: min/max unused, as in sd-scripts
        if min(width, height) < step:
            raise problem(f"{where}.resolution", f"{width}x{height} is below bucket_reso_steps {step}")
        return BucketConfig(resolution=(width, height), step=step, min_side=step, max_side=max(width, height), upscale=False)
    # sd-scripts moves min down and max up to multiples of the step, then requires the resolution between them.
    low, high = get("min_bucket_reso"), get("max_bucket_reso")
    low, high = max(step, low - low % step), high + (-high) % step
    if min(width, height) < low:
        raise problem(where, f"min_bucket_reso {low} is above the resolution {width}x{height}")
    if max(width, height) > high:
        raise problem(where, f"max_bucket_reso {high} is below the resolution {width}x{height}")
    # No aspect limit in sd-scripts: every width from min to max that keeps the height within them is a bucket.
    return BucketConfig(resolution=(width, height), step=step, min_side=low, max_side=high, max_aspect=high / low)


def _check_batch_size(chain: list[dict], where: str, problem: _Problems) -> None:
    """tunelab trains one batch size per run (train.batch_size, which `load_data_config` puts on the command line)."""
    dataset_tables = chain[1:3]
    written = next((t["batch_size"] for t in dataset_tables if t.get("batch_size") is not None), None)
    run = chain[3].get("batch_size")
    if written is not None and run is not None and written != run:
        raise problem(f"{where.rsplit('.subsets', 1)[0]}.batch_size",
                      f"{written} differs from train.batch_size {run} (tunelab trains one batch size per run)")
