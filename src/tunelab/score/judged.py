"""Sample every probe with one model, judge every image, and keep the per-image verdicts in `judged.json` beside the
images (PNG with A1111 infotext). One folder per model, so an interrupted `tunelab score` resumes without sampling
again the models it finished: a folder whose `judged.json` carries the same probes fingerprint, judge and model (its
path, and a stamp of its weight files: a model retrained at the same path is scored again) is reused as it is. When only the judge differs (another judge, a retrained tagger, changed thresholds or toy rules:
`Judge.identity`), the saved images are judged again without sampling: they are the same (model, prompt, seed).

Judging runs once per image (`Judge.read`), then every expectation is checked on every image (`Judge.verdict` is
cheap): a concept's pass values come from its own images; a target's contamination from the images of every
retain and empty-prompt probe."""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tunelab import atomic
from tunelab.evaluate.infotext import model_hash, save_png_with_infotext
from tunelab.evaluate.sampling import SampleRequest, SamplingEngine
from tunelab.models.model_path import resolve_model_path, weight_files
from tunelab.score.judges.base import Judge, Judged
from tunelab.score.probes import Probe, Probes

JUDGE_CHUNK = 64  # images per Judge.read call: a progress bar that moves, and bounded memory for big taggers


@dataclass
class JudgedModel:
    """Per-image verdicts of one model, in each concept's probe order (prompt by prompt, seed by seed)."""

    label: str
    path: str
    passed: dict[str, list[int]]  # concept → 0/1 per image of its own probes
    score: dict[str, list[float]]
    contamination: dict[str, dict[str, list[int]]]  # target → {"retain": 0/1 per retain image, "uncond": ...}
    seconds: dict[str, float]

    def to_dict(self, fingerprint: str, judge: str, judge_identity: str, stamp: str) -> dict:
        return {"fingerprint": fingerprint, "judge": judge, "judge_identity": judge_identity, "label": self.label,
                "model": self.path, "model_stamp": stamp,
                "passed": self.passed, "score": self.score, "contamination": self.contamination,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> "JudgedModel":
        return cls(data["label"], data["model"], data["passed"], data["score"], data["contamination"],
                   data.get("seconds", {}))


def request_for(probe: Probe) -> SampleRequest:
    s = probe.settings
    return SampleRequest(prompt=probe.prompt, seed=probe.seed, negative_prompt=s.negative_prompt, steps=s.steps,
                         cfg_scale=s.cfg_scale, sampler=s.sampler, width=s.width, height=s.height,
                         clip_skip=s.clip_skip)


def image_path(folder: Path, probe: Probe) -> Path:
    return folder / "images" / safe_name(probe.concept) / probe.file_name


def safe_name(name: str) -> str:
    """A concept name as a folder name (names are free text in the probes file)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._") or "concept"


def model_stamp(model: str | Path) -> str:
    """Which weights a model path holds now, without reading them: each weight file's name, size and modification
    time. A model retrained or replaced at the same path is not the one scored before (a copy counts as new too)."""
    path = resolve_model_path(model)
    stats = "".join(f"{f.relative_to(path.parent).as_posix()}:{f.stat().st_size}:{f.stat().st_mtime_ns}\n"
                    for f in weight_files(path))
    return hashlib.sha256(stats.encode()).hexdigest()[:16]


def _record(folder: Path, fingerprint: str, model: str) -> dict | None:
    """`judged.json` when it is about these probes and this model as it is now (whatever the judge), else None;
    a record without a model stamp (an older tunelab's) counts as another model."""
    record = folder / "judged.json"
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: sampled again (written atomically, so only a foreign edit gets here)
    if (data.get("fingerprint"), data.get("model"), data.get("model_stamp")) != (fingerprint, model, model_stamp(model)):
        return None
    return data


def load_finished(folder: Path, fingerprint: str, judge: Judge, model: str) -> JudgedModel | None:
    data = _record(folder, fingerprint, model)
    if data is None or data.get("judge_identity") != judge.identity():
        return None
    return JudgedModel.from_dict(data)


def saved_images(folder: Path, all_probes: list[Probe], fingerprint: str, model: str) -> list[Image.Image] | None:
    """The images an earlier scoring of this model with these probes saved (judged by another judge), or None."""
    if _record(folder, fingerprint, model) is None:
        return None
    paths = [image_path(folder, p) for p in all_probes]
    if not all(p.is_file() for p in paths):
        return None
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def render(probes: Probes, model_path: str | Path, *, batch_size: int, dtype: str | None, progress: bool) -> list:
    """Every probe of `probes` rendered by the model at `model_path` (loaded here, freed after)."""
    import torch

    from tunelab.models.io import load_model

    model = load_model(model_path, dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    engine = SamplingEngine(model, batch_size=batch_size, empty_prompt_as_zeros=probes.spec.empty_prompt_as_zeros,
                            progress=progress)
    images = engine.render([request_for(p) for p in probes.all_probes()])
    del engine, model
    gc.collect()
    return images


def write_images(all_probes: list[Probe], images: list, model_path: str | Path, folder: Path) -> None:
    """Each image as a PNG with its A1111 infotext, under the model's folder."""
    from tunelab.models.io import model_label

    name, short_hash = model_label(model_path), model_hash(model_path)
    for probe, image in zip(all_probes, images):
        infotext = request_for(probe).infotext(model=name, model_hash=short_hash)
        save_png_with_infotext(image, image_path(folder, probe), infotext)


def sample_and_judge(probes: Probes, judge: Judge, label: str, model_path: str | Path, folder: Path, *,
                     batch_size: int = 16, dtype: str | None = None, progress: bool = True) -> JudgedModel:
    """Render every probe with the model at `model_path`, write the images, judge them, write `judged.json`."""
    all_probes = probes.all_probes()
    stamp = model_stamp(model_path)  # before sampling: the weights these images come from
    started = time.perf_counter()
    images = saved_images(folder, all_probes, probes.fingerprint(), str(model_path))  # judged before: no sampling
    sampled_now = images is None
    if sampled_now:
        images = render(probes, model_path, batch_size=batch_size, dtype=dtype, progress=progress)
    sampled = time.perf_counter()
    if sampled_now:
        write_images(all_probes, images, model_path, folder)
    written = time.perf_counter()

    chunks = [images[k : k + JUDGE_CHUNK] for k in range(0, len(images), JUDGE_CHUNK)]
    with tqdm(total=len(images), desc=f"judging ({judge.name})", unit="img", disable=not progress) as bar:
        readings = []
        for chunk in chunks:
            readings.append(judge.read(chunk))
            bar.update(len(chunk))
    verdicts = verdicts_of(probes, judge, readings, all_probes)
    judged_at = time.perf_counter()
    verdicts.label, verdicts.path = label, str(model_path)
    verdicts.seconds = {"load_and_sample": round(sampled - started, 3), "write_images": round(written - sampled, 3),
                        "judge": round(judged_at - written, 3), "images": len(images)}
    atomic.write_json(folder / "judged.json", verdicts.to_dict(probes.fingerprint(), judge.name, judge.identity(),
                                                               stamp))
    return verdicts


def verdicts_of(probes: Probes, judge: Judge, readings: list, all_probes: list[Probe]) -> JudgedModel:
    """Every concept's verdicts from one model's readings (`judge.read` of `all_probes`' images, in chunks)."""
    def on_all(expectation) -> Judged:
        parts = [judge.verdict(chunk, expectation) for chunk in readings]
        return Judged(np.concatenate([p.passed for p in parts]), np.concatenate([p.score for p in parts]))

    index: dict[str, list[int]] = {}
    for i, probe in enumerate(all_probes):
        index.setdefault(probe.concept, []).append(i)
    others = {role: [i for c in probes.by_role(role) for i in index[c.name]] for role in ("retain", "uncond")}
    passed, score, contamination = {}, {}, {}
    for concept in probes.concepts:
        if concept.role == "uncond" and not concept.has_expectation():
            continue
        judged = on_all(concept.expectation())
        own = index[concept.name]
        passed[concept.name] = judged.passed[own].astype(int).tolist()
        score[concept.name] = [round(float(v), 5) for v in judged.score[own]]
        if concept.role == "target":
            contamination[concept.name] = {role: judged.passed[ids].astype(int).tolist() for role, ids in others.items()}
    return JudgedModel("", "", passed, score, contamination, {})
