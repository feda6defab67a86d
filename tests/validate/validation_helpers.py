"""Helpers shared by the validation tests (a module, not conftest: two conftest modules would collide)."""


def run_config(tmp_path, **validation):
    """A run config whose [model] path does not exist (the model is built in memory) with a [validation] table."""
    from tunelab.train.config import RunConfig

    table = {"cache_dir": str(tmp_path / "cache"), "retention_steps": 3, **validation}
    return RunConfig.model_validate({"model": {"path": str(tmp_path / "no-model")}, "train": {"max_steps": 1},
                                     "validation": table})
