"""The one error type the CLI turns into a one-line message and exit code 2."""


class TunelabError(Exception):
    """A problem with the user's input (file, config, model). Message is one line: what and why."""


def fail(path, problem: str) -> "TunelabError":
    """Build an error that names the file and the problem: `raise fail(path, "not a model")`."""
    return TunelabError(f"{path}: {problem}")
