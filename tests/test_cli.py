"""The `tunelab` entry point: a usage error (missing argument, bad option value, unknown command) is one line and
exit 2 like every other refusal; `tunelab` alone still prints the help."""

import subprocess
import sys


def tunelab(*args):
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=120)


def test_usage_errors_are_one_line_and_exit_2():
    for args, message in [(["sample"], "error: Missing argument 'model'. (see "),
                          (["captions", "run.toml", "--preview", "-1"], "error: Invalid value for '--preview'"),
                          (["sampel"], "error: No such command 'sampel'.")]:
        result = tunelab(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    help_text = tunelab()
    assert help_text.returncode == 2 and "Commands" in help_text.stdout + help_text.stderr
    assert tunelab("--version").returncode == 0
