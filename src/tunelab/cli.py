"""The `tunelab` command line: one typer app; each command is a thin call into a stage module.

Errors from bad input (`TunelabError`) print one line `error: <file>: <problem>` and exit with code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tunelab import __version__
from tunelab.errors import TunelabError

app = typer.Typer(
    name="tunelab",
    help="Fine-tune SDXL / SD1.5 models on tagged images and measure what each run learned and forgot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo's outputs.")) -> None:
    """Run the built-in toy world end to end (placeholder until the toy world lands: prints help)."""
    typer.echo(app.info.help)


def main() -> None:
    try:
        app()
    except TunelabError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
