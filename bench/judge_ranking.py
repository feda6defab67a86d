"""Do two judges rank the same finetunes the same way? Re-judges the images a `tunelab score` / `tunelab demo` run
saved (no sampling: the very images, same seeds) with the analytic toy judge and a WD-layout tagger, prints the
per-image agreement of their verdicts per role, both scoreboards' ranking of the settings (the sweep's objective),
and the pass rates behind it. Issue 11: the toy tagger must agree with the analytic judge on ≥ 90 % of images
overall and on each role, and rank the demo's modes the same way.

    .venv/bin/python bench/judge_ranking.py OUT/score --tagger DIR [--threads 2]

OUT/score: the score folder a demo writes (models/base, models/<setting>[/seed-K]); DIR: e.g. `tunelab toy tagger`'s."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image


def model_folders(score_dir: Path) -> dict[str, list[Path]]:
    """setting → its model folders (one per seed), base first."""
    folders: dict[str, list[Path]] = {}
    for setting_dir in sorted((score_dir / "models").iterdir(), key=lambda p: (p.name != "base", p.name)):
        seeds = sorted(setting_dir.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
        folders[setting_dir.name] = seeds or [setting_dir]
    return folders


def per_check(run, roles: dict[str, str]) -> dict[str, np.ndarray]:
    """check → 0/1 verdicts of every image it reads, in a fixed order: each role's own prompts, and the targets'
    contamination of retain prompts and of the empty prompt (the uncond role's only check). roles: concept → role."""
    out: dict[str, list] = {CHECKS[0]: [], CHECKS[1]: [], CHECKS[2]: [], CHECKS[3]: []}
    for concept, passed in run.passed.items():
        out[f"{roles[concept]}: own prompts"].extend(passed)
    for target, where in run.contamination.items():
        out[CHECKS[2]].extend(where["retain"])
        out[CHECKS[3]].extend(where["uncond"])
    return {check: np.array(v, dtype=bool) for check, v in out.items()}


CHECKS = ("target: own prompts", "retain: own prompts", "retain: showing a target", "uncond: showing a target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("score_dir", type=Path)
    parser.add_argument("--tagger", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from tunelab.score.judged import image_path, verdicts_of
    from tunelab.score.judges import make_judge
    from tunelab.score.judges.tagger import TaggerJudge
    from tunelab.score.summary import summarise
    from tunelab.sweep.scoring import format_ranking, rank_settings
    from tunelab.toy.evaluation import load_toy_probes

    probes = load_toy_probes(None)
    roles = {c.name: c.role for c in probes.concepts}
    judges = {"toy": make_judge("toy"), "tagger": TaggerJudge(args.tagger, threads=args.threads)}
    all_probes = probes.all_probes()
    judged = {name: {} for name in judges}
    agree = {check: np.zeros(2, dtype=np.int64) for check in (*CHECKS, "own prompts, both roles", "every check")}
    seconds = dict.fromkeys(judges, 0.0)
    folders = model_folders(args.score_dir)
    for setting, paths in folders.items():
        for folder in paths:
            images = [Image.open(image_path(folder, p)).convert("RGB") for p in all_probes]
            runs = {}
            for name, judge in judges.items():
                start = time.perf_counter()
                runs[name] = verdicts_of(probes, judge, [judge.read(images)], all_probes)
                seconds[name] += time.perf_counter() - start
                judged[name].setdefault(setting, []).append(runs[name])
            toy, tagger = per_check(runs["toy"], roles), per_check(runs["tagger"], roles)
            for check in CHECKS:
                same = [(toy[check] == tagger[check]).sum(), len(toy[check])]
                agree[check] += same
                agree["every check"] += same
                if check.endswith("own prompts"):
                    agree["own prompts, both roles"] += same
    models = sum(len(p) for p in folders.values())
    print(f"{models} models × {len(all_probes)} images re-judged from {args.score_dir}; reading took "
          + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))
    print("\nper-image agreement of the two judges' verdicts")
    for check, (same, total) in agree.items():
        print(f"  {check:26s} {same:6d} of {total:6d}  {same / total:6.1%}")
    orders = {}
    for name in judges:
        board = summarise(probes, judged[name])
        orders[name] = [r.setting for r in rank_settings(board)]
        print(f"\nranking with the {name} judge")
        print(format_ranking(board))
    same = orders["toy"] == orders["tagger"]
    print(f"\nsame ranking: {'yes' if same else 'no'} (toy: {' > '.join(orders['toy'])}; "
          f"tagger: {' > '.join(orders['tagger'])})")


if __name__ == "__main__":
    main()
