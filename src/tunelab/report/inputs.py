"""What a report is built from, found in a run folder (or its direct sub-folders) and checked on load:

  scoreboard.json    concept scores per setting with intervals and verdicts (`tunelab score`, the demo)
  findings.json      the practitioner's statements tested, each with effect, interval and verdict (the demo)
  validation.json    deterministic validation loss per model and timestep band (`tunelab validate`, the demo)
  grid.json          an XYZ grid folder: grid PNGs, cell PNGs, every cell's infotext (`tunelab grid`)
  tensorboard/       a training run's TensorBoard events (`tunelab train`): loss, learning rates, val/<set>/...

A file that is there but unreadable is a one-line `TunelabError` (file: problem); a file that is not there only
leaves its section out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.config import parse_config
from tunelab.errors import fail


class _Record(BaseModel):
    """A file another stage wrote: keys this report does not use are allowed (the writers add fields over time)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Scoreboard(_Record):
    """`tunelab score`'s scoreboard.json (score/summary.py): settings × concepts with intervals and verdicts."""

    format: int
    base: str
    settings: list[str] = Field(min_length=1)
    seeds: dict[str, int] = {}
    concepts: list[dict] = Field(min_length=1)
    results: dict[str, dict[str, dict]]
    roles: dict[str, dict[str, dict]] = {}
    judge: str = ""
    probes: str = ""
    timings_s: dict[str, float] = {}

    @model_validator(mode="before")
    @classmethod
    def _not_the_old_layout(cls, data):
        if isinstance(data, dict) and "scores" in data and "format" not in data:
            raise ValueError("an older scoreboard (shares without intervals): re-run `tunelab score` on these models")
        return data

    @field_validator("format")
    @classmethod
    def _current(cls, value: int) -> int:
        if value != 2:
            raise ValueError(f"scoreboard format {value} is not read by this tunelab (2 is): re-run `tunelab score`")
        return value


class FindingRecord(_Record):
    statement: str
    comparison: str
    effect: Optional[dict] = None
    verdict: str
    detail: str = ""


class FindingsRecord(_Record):
    """findings.json (`tunelab findings`, the demo): the practitioner's statements, each with a verdict."""

    source: str = ""
    findings: list[FindingRecord] = Field(min_length=1)


class ValidatedModel(_Record):
    name: str
    path: str = ""
    scalars: dict[str, float]


class ValidationResults(_Record):
    bands: list[tuple[int, int]] = Field(min_length=1)
    sets: dict[str, int]
    skipped: dict[str, str] = {}
    seed: Optional[int] = None
    models: list[ValidatedModel] = Field(min_length=1)


class GridCellRecord(_Record):
    file: str
    x: int
    y: int
    z: int
    checkpoint: str
    infotext: str


class GridRecord(_Record):
    config: dict
    grids: list[str]
    cells: list[GridCellRecord]


@dataclass
class ReportInputs:
    folder: Path
    scoreboards: list[tuple[Path, Scoreboard]] = field(default_factory=list)
    findings: list[tuple[Path, FindingsRecord]] = field(default_factory=list)
    validations: list[tuple[Path, ValidationResults]] = field(default_factory=list)
    grids: list[tuple[Path, GridRecord]] = field(default_factory=list)  # (grid folder, its grid.json)
    runs: list[Path] = field(default_factory=list)  # folders holding a tensorboard/ with event files

    def absent(self) -> list[str]:
        """What a full report would show that this folder has none of."""
        missing = {"scoreboard.json (concept scores)": self.scoreboards,
                   "validation.json (validation loss per band)": self.validations,
                   "grid.json (XYZ grids)": self.grids,
                   "run-*/tensorboard (training curves)": self.runs}
        return [name for name, found in missing.items() if not found]


def read_json_record(path: Path, model: type[_Record]) -> _Record:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise fail(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise fail(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise fail(path, f"expected a JSON object, found {type(data).__name__}")
    return parse_config(model, data, path)


def _candidates(folder: Path) -> list[Path]:
    """The folder itself, then its sub-folders in name order (a demo folder holds grid/, run-off/, run-on/)."""
    return [folder] + sorted(p for p in folder.iterdir() if p.is_dir())


def has_events(tensorboard: Path) -> bool:
    return tensorboard.is_dir() and any(tensorboard.glob("events.out.tfevents.*"))


def find_inputs(folder: str | Path) -> ReportInputs:
    folder = Path(folder)
    if not folder.is_dir():
        raise fail(folder, "not a folder (give a run folder: the demo's output, a training run or a grid)")
    inputs = ReportInputs(folder=folder.resolve())
    for place in _candidates(inputs.folder):
        if (place / "scoreboard.json").is_file():
            inputs.scoreboards.append((place / "scoreboard.json", read_json_record(place / "scoreboard.json", Scoreboard)))
        if (place / "findings.json").is_file():
            inputs.findings.append((place / "findings.json", read_json_record(place / "findings.json", FindingsRecord)))
        if (place / "validation.json").is_file():
            inputs.validations.append((place / "validation.json",
                                       read_json_record(place / "validation.json", ValidationResults)))
        if (place / "grid.json").is_file():
            inputs.grids.append((place, read_json_record(place / "grid.json", GridRecord)))
        if has_events(place / "tensorboard"):
            inputs.runs.append(place)
    if len(inputs.absent()) == 4:
        raise fail(folder, "nothing to report: no scoreboard.json, validation.json, grid.json or tensorboard/ "
                           "here or in its sub-folders")
    return inputs
