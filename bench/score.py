"""What scoring costs on the toy world, measured side by side in one run: sampling against judging.

1. Pieces, on the shipped toy base: images/s of sampling every toy probe (model loaded once per round, not
   counted; one untimed render first, as a warm-up), of the toy judge (pixel rules) and of the tagger judge (a
   WD-layout folder, `--tagger DIR`, e.g. from `tunelab toy tagger`; skipped, with the reason, without one) on
   those same images; a judge's time counts `read` plus every concept's `verdict` on every
   image (what `tunelab score` does: each target is also checked on the other images, for contamination). The
   pieces run in a rotating order, round after round; per round the ratio judge time ÷ sampling time is taken
   (paired, so load from other processes shifts both), and its median over rounds printed.
2. Judging's share of `tunelab score`'s wall time: `score_models` (the code of `tunelab score`: load, sample,
   write the PNGs, judge, summarise) on the base and every `--checkpoint`, into a fresh folder each round (nothing
   reused), with the toy judge and the tagger judge alternately; the share is the recorded `judge` seconds ÷ the
   wall time. Target ≤ 10 % for both.

Every number is the median over rounds, with min–max and n. Threads are pinned (OMP_NUM_THREADS, torch and
onnxruntime threads = --threads) so runs compare; seconds are wall time (CPU seconds too for the pieces, which load
from other processes on a shared machine barely changes at one thread).

    .venv/bin/python bench/score.py [--samples 4] [--rounds 3] [--threads 1] [--tagger DIR] [--checkpoint PATH ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def spread(values: list[float], fmt: str = "{:.1f}", unit: str = "") -> str:
    """"median unit [min–max] n=K"."""
    return (f"{fmt.format(statistics.median(values))}{unit} [{fmt.format(min(values))}–{fmt.format(max(values))}] "
            f"n={len(values)}")


def timed(work) -> tuple[object, float, float]:
    """(result, wall seconds, process CPU seconds) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def judge_all(judge, probes, images) -> None:
    """What scoring asks of a judge: one read per image, every expectation checked on every image."""
    readings = judge.read(images)
    for concept in probes.concepts:
        if concept.has_expectation():
            judge.verdict(readings, concept.expectation())


def measure_pieces(probes, judges: dict, rounds: int, batch_size: int) -> dict[str, list[tuple[float, float]]]:
    """Per piece ("sampling", each judge): (wall, CPU) seconds of each round."""
    from tunelab.evaluate.sampling import SamplingEngine
    from tunelab.models.io import load_model
    from tunelab.score.judged import request_for
    from tunelab.toy.base_model import TOY_BASE_DIR

    requests = [request_for(p) for p in probes.all_probes()]
    images = None
    pieces = ["sampling", *judges]
    times: dict[str, list[tuple[float, float]]] = {piece: [] for piece in pieces}
    for r in range(rounds):
        engine = SamplingEngine(load_model(TOY_BASE_DIR), batch_size=batch_size,
                                empty_prompt_as_zeros=probes.spec.empty_prompt_as_zeros, progress=False)
        if images is None:  # the judges need images before their first turn
            images = engine.render(requests)
        for piece in pieces[r % len(pieces):] + pieces[:r % len(pieces)]:  # rotate the order each round
            if piece == "sampling":
                rendered, wall, cpu = timed(lambda: engine.render(requests))
                images = rendered
            else:
                _, wall, cpu = timed(lambda: judge_all(judges[piece], probes, images))
            times[piece].append((wall, cpu))
        del engine
    return times


def measure_score_share(probes, judges: dict, runs, rounds: int, batch_size: int) -> dict[str, list[dict]]:
    """Per judge: `score_models`' recorded timings of each round (a fresh output folder every time)."""
    from tunelab.score.run import score_models

    names = list(judges)
    timings: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # alternate which judge runs first
            with tempfile.TemporaryDirectory() as out:
                board = score_models(probes, judges[name], runs, out, batch_size=batch_size, progress=False,
                                     log=lambda line: None)
            timings[name].append(board["timings_s"])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4, help="samples per probe prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64, help="images per sampling call")
    parser.add_argument("--tagger", type=Path, help="a toy tagger folder (model.onnx + selected_tags.csv)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="PATH or NAME=PATH: another toy model for the `tunelab score` part (repeatable)")
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1:
        raise SystemExit("--rounds and --threads: at least 1")
    if args.samples < 2:  # checked before any training: the scoreboard's intervals need two images a concept
        raise SystemExit("--samples: at least 2 (a concept's interval needs two images)")
    # pinned before torch, numpy and onnxruntime start their thread pools
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)

    from tunelab.score.run import parse_checkpoint_arg, plan_runs
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import load_toy_probes
    from tunelab.toy.score_judge import ToyJudge

    probes = load_toy_probes(args.samples)
    judges = {"toy": ToyJudge()}
    skipped = {}
    if args.tagger is None:
        skipped["tagger"] = "no --tagger DIR given (build one with `tunelab toy tagger`)"
    else:
        from tunelab.score.judges.tagger import TaggerJudge

        judges["tagger"] = TaggerJudge(args.tagger, threads=args.threads)
    for judge in judges.values():
        probes.check_judge(judge)
    runs = plan_runs(TOY_BASE_DIR, [parse_checkpoint_arg(c) for c in args.checkpoint])
    images = len(probes.all_probes())
    s = probes.spec.sampling
    print(f"toy probes: {images} images per model ({len(probes.concepts)} concepts, {args.samples} samples per "
          f"prompt), {s.width}×{s.height}, {s.steps} steps, {s.sampler}; batch {args.batch_size}; "
          f"{args.threads} thread(s); {args.rounds} rounds", flush=True)

    pieces = measure_pieces(probes, judges, args.rounds, args.batch_size)
    print("\n1. pieces on the toy base (median [min–max] n): images/s by wall time | by CPU time")
    for piece, values in pieces.items():
        by_wall = spread([images / max(w, 1e-9) for w, _ in values])
        by_cpu = spread([images / max(c, 1e-9) for _, c in values])
        print(f"  {piece + (' judge' if piece != 'sampling' else ''):<14} {by_wall:>28} | {by_cpu:>28}")
    for name in judges:
        share = [100 * j[0] / p[0] for j, p in zip(pieces[name], pieces["sampling"])]
        print(f"  {name} judge time ÷ sampling time, per round: {spread(share, '{:.2f}', ' %')}")
    for name, reason in skipped.items():
        print(f"  {name} judge: skipped — {reason}")

    shares = measure_score_share(probes, judges, runs, args.rounds, args.batch_size)
    models = ", ".join(r.folder_name for r in runs)
    print(f"\n2. `tunelab score` on {len(runs)} model(s) ({models}), {images * len(runs)} images, fresh folder each "
          "round: share of the wall time (median [min–max] n)")
    for name, rounds in shares.items():
        judge_share = [100 * t["judge"] / t["wall"] for t in rounds]
        sample_share = [100 * t["load_and_sample"] / t["wall"] for t in rounds]
        write_share = [100 * t["write_images"] / t["wall"] for t in rounds]
        verdict = "ok" if statistics.median(judge_share) <= 10 else "over the 10 % target"
        print(f"  {name + ' judge':<13} judging {spread(judge_share, '{:.2f}', ' %')} ({verdict}); "
              f"load+sample {spread(sample_share, unit=' %')}; write PNGs {spread(write_share, unit=' %')}; "
              f"wall {spread([t['wall'] for t in rounds], unit=' s')}")
    for name, reason in skipped.items():
        print(f"  {name} judge: skipped — {reason}")


if __name__ == "__main__":
    main()
