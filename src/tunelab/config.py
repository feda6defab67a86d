"""Shared config machinery: strict pydantic models loaded from TOML with one-line errors (file, key, why).

Each stage defines its own models (e.g. `train/config.py`) on top of `StrictModel` and loads them with
`load_toml_config`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tunelab.errors import TunelabError, fail

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors, not silently ignored: a typo in a config must not train the wrong thing."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise fail(path, "config file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise fail(path, "config is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise fail(path, f"invalid TOML: {e}") from None


def describe_validation_error(err: ValidationError) -> str:
    """First problem of a pydantic error as `key.path: message`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "value_error":  # our own validators' messages: without pydantic's "Value error, " prefix
        msg = msg.removeprefix("Value error, ")
    extra = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{key + ': ' if key else ''}{msg}{extra}"  # a whole-table check has no key to name


def parse_config(model: type[M], data: dict, source: str | Path = "<config>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise TunelabError(f"{source}: {describe_validation_error(e)}") from None


def load_toml_config(model: type[M], path: str | Path) -> M:
    """Load and validate a TOML file; relative paths inside stay relative to the caller (resolve them in the stage)."""
    return parse_config(model, read_toml(path), path)
