"""Read an sd-scripts training command line (pasted as one string, split words, or a shell / batch file) or its
`--config_file` TOML into {flag: value}, as sd-scripts' argparse would: `--flag value`, `--flag=value`,
store-true switches, `nargs="*"` lists; the config file's tables are flattened and flags on the command line win
over it. `accelerate launch` options before the script are kept apart (they are not training settings)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import read_toml
from tunelab.errors import TunelabError
from tunelab.migrate.sd_scripts_flags import FLAGS, LIST, SWITCH

_CONTINUATION = re.compile(r"[ \t]*(\\|\^|`)\r?\n")  # sh, cmd.exe and PowerShell line continuations


@dataclass
class ParsedArgs:
    values: dict[str, Any] = field(default_factory=dict)  # flag name (no dashes) → typed value
    unknown: dict[str, str] = field(default_factory=dict)  # not a flag of sdxl_train.py → what was given
    launcher: list[str] = field(default_factory=list)  # `accelerate launch …` words before the script
    script: str | None = None


def parse_sd_scripts(words: list[str]) -> ParsedArgs:
    """`words`: the command line split into words, one string holding it all, or one file (.toml = config file)."""
    if len(words) == 1 and Path(words[0]).is_file():
        path = Path(words[0])
        if path.suffix.lower() == ".toml":
            parsed = ParsedArgs()
            _merge_config_file(parsed, path, given_on_command_line=set())
            return parsed
        words = [path.read_text(encoding="utf-8-sig")]
    if len(words) == 1:
        words = split_command(words[0])
    return parse_words(words)


def split_command(text: str) -> list[str]:
    """One pasted command (continuation lines joined, comment lines dropped) split as a POSIX shell would."""
    text = _CONTINUATION.sub(" ", text)
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", "REM ", "rem "))]
    try:
        return shlex.split(" ".join(lines))
    except ValueError as e:
        raise TunelabError(f"sd-scripts command line: cannot split it into words ({e})") from None


def parse_words(words: list[str]) -> ParsedArgs:
    parsed = ParsedArgs()
    script_at = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
    if script_at is not None:
        parsed.launcher, parsed.script, words = words[:script_at], words[script_at], words[script_at + 1 :]
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise TunelabError(f"sd-scripts command line: {word!r} is not a --flag (quote values with spaces)")
        name, inline = (word[2:].split("=", 1) + [None])[:2]
        i += 1
        flag = FLAGS.get(name)
        takes = [] if inline is None else [inline]
        if flag is None or flag.kind == LIST or (flag.kind != SWITCH and inline is None):
            while i < len(words) and not words[i].startswith("--") and (flag is None or flag.kind == LIST or not takes):
                takes.append(words[i])
                i += 1
        if flag is None:
            parsed.unknown[name] = " ".join(takes)
            continue
        parsed.values[name] = _typed(name, takes)
    if "config_file" in parsed.values:
        config = str(parsed.values["config_file"])
        path = Path(config if config.endswith(".toml") else config + ".toml")  # sd-scripts adds the suffix
        _merge_config_file(parsed, path, given_on_command_line=set(parsed.values))
    return parsed


def _typed(name: str, words: list[str]):
    flag = FLAGS[name]
    if flag.kind == SWITCH:
        if words:
            raise TunelabError(f"sd-scripts command line: --{name} is a switch and takes no value (got {words[0]!r})")
        return True
    if flag.kind == LIST:
        return list(words)
    if len(words) != 1:
        raise TunelabError(f"sd-scripts command line: --{name} needs one value")
    return _convert(name, words[0])


def _convert(name: str, raw: str):
    kind = FLAGS[name].type
    try:
        if kind == "int_or_float":
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        return kind(raw) if kind in (int, float) else raw
    except ValueError:
        raise TunelabError(f"sd-scripts command line: --{name} {raw!r} is not {'an integer' if kind is int else 'a number'}") from None


def _merge_config_file(parsed: ParsedArgs, path: Path, given_on_command_line: set[str]) -> None:
    """sd-scripts flattens every table of the config file into flags; the command line's own flags win."""
    for section, table in read_toml(path).items():
        for name, raw in (table.items() if isinstance(table, dict) else [(section, table)]):
            if name in given_on_command_line or name == "config_file":
                continue
            flag = FLAGS.get(name)
            if flag is None:
                parsed.unknown[name] = str(raw)
            elif flag.kind == SWITCH:
                if not isinstance(raw, bool):
                    raise TunelabError(f"{path}: {name}: expected true or false, got {raw!r}")
                parsed.values[name] = raw
            elif flag.kind == LIST:
                parsed.values[name] = [str(v) for v in (raw if isinstance(raw, list) else [raw])]
            else:
                parsed.values[name] = _convert(name, str(raw)) if isinstance(raw, str) else raw
