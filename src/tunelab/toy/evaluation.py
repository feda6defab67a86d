"""The toy world's probes — the shipped probes file `probes.toml` (concepts, prompts, roles, what the analytic judge
and the toy tagger must see) — and scoring toy models with them through `tunelab score`'s own code.

Concepts: the targets a toy finetune should learn (zorb: never in the base world, drawn as a purple star; kiko:
half-known, eyes closed in the base world), the known shapes the finetune world redraws in its outline style, and
the known concepts it does not contain (cars, mira, locations): the retention set."""

from __future__ import annotations

from pathlib import Path

TOY_PROBES = Path(__file__).parent / "probes.toml"
RETENTION_GROUPS = ("cars", "characters", "locations")  # retain concepts the finetune world does not contain


def load_toy_probes(samples_per_prompt: int | None = None, path: str | Path = TOY_PROBES):
    from tunelab.score.probes import load_probes

    probes = load_probes(path)
    return probes.with_samples(samples_per_prompt) if samples_per_prompt else probes


def retention_prompts() -> list[str]:
    """The prompts of the validation retention set: known concepts the finetune world does not contain."""
    return [p for c in load_toy_probes().by_role("retain") if c.group in RETENTION_GROUPS for p in c.prompts]


def score_toy_models(models: dict[str, list[Path]], out: str | Path, *, samples_per_prompt: int | None = None,
                     judge: str = "toy", judge_path: str | Path | None = None, batch_size: int = 64,
                     progress: bool = False, log=print) -> dict:
    """`tunelab score` with the toy probes: `models` = setting → checkpoints (one per training seed), "base" first."""
    from tunelab.score.judges import judge_for
    from tunelab.score.run import plan_runs, score_models

    probes = load_toy_probes(samples_per_prompt)
    (base,) = models["base"]
    runs = plan_runs(base, [(setting, path) for setting, paths in models.items() if setting != "base"
                            for path in paths])
    return score_models(probes, judge_for(probes, judge, judge_path), runs, out, batch_size=batch_size, progress=progress,
                        log=log)
