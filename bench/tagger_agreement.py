"""Does the toy tagger judge toy model samples the way the analytic pixel judge does? (issue 11's done-when: the
verdicts agree on ≥ 90 % of images overall and on each role.)

For each model: sample the toy probes file's prompts (same seeds for every model), read every image once with both
judges, and compare their verdicts image by image for each concept's own expectation (its `toy` expectation, and
for the tagger the tags `tags_for_toy_expectation` maps it to). Also checked:
- uncond: every concept's expectation on the empty prompt's images (what the model draws unasked);
- contamination: each target's expectation on every other concept's images, the empty prompt's included.

    .venv/bin/python bench/tagger_agreement.py [MODEL ...] [--tagger DIR] [--samples 16] [--threads 2] [--dump DIR]

MODEL: 'base' (the shipped toy base, the default) or any loadable checkpoint. Without --tagger a toy tagger is
trained first with `tunelab toy tagger`'s defaults (and its training time printed). --dump writes every image the
judges disagree on (name: model, check, concept, seed, both verdicts)."""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def agreement_counts(label, probes, images, toy_readings, tag_readings, toy_judge, tagger, dump=None):
    """(check, group) → [agree, toy passes, tagger passes, images], for one model. `images` etc.: concept → list."""
    from tunelab.score.judges.base import Expectation
    from tunelab.toy.tagger import tags_for_toy_expectation

    counts = defaultdict(lambda: np.zeros(4, dtype=np.int64))

    def compare(images_of, expected, check, keys):
        expectation = Expectation(tags=tuple(tags_for_toy_expectation(expected.toy)), toy=expected.toy)
        toy = toy_judge.verdict(toy_readings[images_of], expectation).passed
        tag = tagger.verdict(tag_readings[images_of], expectation).passed
        for key in keys:
            counts[key] += np.array([(toy == tag).sum(), toy.sum(), tag.sum(), len(toy)])
        for k in np.nonzero(toy != tag)[0] if dump else ():
            name = f"{label} {check} {expected.name} on {images_of} {k} toy{int(toy[k])} tagger{int(tag[k])}"
            images[images_of][k].resize((128, 128)).save(dump / f"{re.sub(r'[^A-Za-z0-9]+', '-', name)}.png")

    judged = [c for c in probes.concepts if c.toy]
    uncond = [c.name for c in probes.by_role("uncond")]
    for concept in judged:
        if concept.role != "uncond":
            compare(concept.name, concept, "own", [("own prompt", concept.group), ("own prompt", "role " + concept.role),
                                                   ("own prompt", "all"), ("concept", concept.name)])
        for empty in uncond:
            compare(empty, concept, "uncond", [("empty prompt", "role uncond"), ("uncond concept", concept.name)])
    for target in probes.by_role("target"):
        for other in probes.concepts:
            if other is not target:
                compare(other.name, target, "contamination", [("contamination", target.name)])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["base"])
    parser.add_argument("--tagger", type=Path, help="a WD-layout tagger folder (default: train a toy tagger first)")
    parser.add_argument("--samples", type=int, help="samples per prompt (default: the probes file's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--details", action="store_true", help="also per concept")
    parser.add_argument("--dump", type=Path, help="write the images the judges disagree on here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tunelab.evaluate.sampling import SamplingEngine
    from tunelab.models.io import load_model, model_label
    from tunelab.score.judged import request_for
    from tunelab.score.judges import make_judge
    from tunelab.score.judges.tagger import TaggerJudge
    from tunelab.toy.base_model import TOY_BASE_DIR
    from tunelab.toy.evaluation import load_toy_probes
    from tunelab.toy.tagger import ToyTaggerConfig, build_toy_tagger, tags_for_toy_expectation

    probes = load_toy_probes(args.samples)
    for concept in probes.concepts:
        if concept.toy and concept.expect and tags_for_toy_expectation(concept.toy) != concept.expect:
            print(f"note: {concept.name}: the probes file expects {concept.expect}, "
                  f"tags_for_toy_expectation gives {tags_for_toy_expectation(concept.toy)} (used here)")
    with tempfile.TemporaryDirectory() as tmp:
        tagger_dir = args.tagger
        if tagger_dir is None:
            tagger_dir = Path(tmp) / "toy_tagger"
            start = time.perf_counter()
            record = build_toy_tagger(tagger_dir, ToyTaggerConfig())
            print(f"toy tagger trained in {time.perf_counter() - start:.0f} s (held-out clean images: {record['held_out']})")
        tagger = TaggerJudge(tagger_dir, threads=args.threads)
        toy_judge = make_judge("toy")
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
        all_probes = probes.all_probes()
        print(f"tagger {tagger_dir} (providers {tagger.providers}); {len(all_probes)} images per model")
        for model in args.models:
            path = TOY_BASE_DIR if model == "base" else Path(model)
            label = "base" if model == "base" else model_label(model)
            start = time.perf_counter()
            engine = SamplingEngine(load_model(path), batch_size=64, empty_prompt_as_zeros=probes.spec.empty_prompt_as_zeros)
            rendered = engine.render([request_for(p) for p in all_probes])
            sampled = time.perf_counter() - start
            images = defaultdict(list)
            for probe, image in zip(all_probes, rendered):
                images[probe.concept].append(image)
            start = time.perf_counter()
            toy_readings = {name: toy_judge.read(ims) for name, ims in images.items()}
            toy_seconds = time.perf_counter() - start
            start = time.perf_counter()
            tag_readings = {name: tagger.read(ims) for name, ims in images.items()}
            tag_seconds = time.perf_counter() - start
            print(f"\n{label}: {len(rendered)} images sampled in {sampled:.1f} s; read by the toy judge in "
                  f"{toy_seconds:.2f} s, by the tagger in {tag_seconds:.2f} s")
            counts = agreement_counts(label, probes, images, toy_readings, tag_readings, toy_judge, tagger, args.dump)
            print(f"  {'check':14s} {'group':42s} {'images':>6s} {'agree':>6s} {'toy':>5s} {'tagger':>6s}")
            for (check, group), (agree, toy, tag, total) in counts.items():
                if check in ("concept", "uncond concept") and not args.details:
                    continue
                print(f"  {check:14s} {group:42s} {total:6d} {agree / total:6.1%} {toy / total:5.0%} {tag / total:6.0%}")


if __name__ == "__main__":
    main()
