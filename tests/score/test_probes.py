"""The probes file: strict TOML (unknown keys, roles, judges → one line naming file and key), sampling settings with
per-concept overrides, the same seeds for every prompt, and a judge that cannot judge a concept refused before any
sampling."""

import subprocess
import sys

import pytest

from tunelab.errors import TunelabError
from tunelab.score.judges import make_judge
from tunelab.score.probes import load_probes
from tunelab.toy.evaluation import TOY_PROBES, load_toy_probes

MINIMAL = """
judge = "toy"
[sampling]
samples_per_prompt = 3
seed = 10
steps = 4
width = 32
height = 32
[[concepts]]
name = "zorb"
role = "target"
prompts = ["zorb", "(zorb:1.2), white background"]
toy = { colour = "purple", shape = "star" }
sampling = { samples_per_prompt = 2, cfg_scale = 3.0 }
[[concepts]]
name = "red circle"
role = "retain"
prompts = ["red, circle"]
toy = { colour = "red", shape = "circle" }
[[concepts]]
name = "nothing"
role = "uncond"
"""


def write(tmp_path, text, name="probes.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_settings_overrides_and_seeds(tmp_path):
    probes = load_probes(write(tmp_path, MINIMAL))
    zorb, circle, empty = probes.concepts
    assert probes.settings_for(zorb).samples_per_prompt == 2 and probes.settings_for(zorb).cfg_scale == 3.0
    assert probes.settings_for(circle).samples_per_prompt == 3 and probes.settings_for(circle).cfg_scale == 7.0
    assert empty.prompts == [""]
    # every prompt gets the same seeds: seed, seed + 1, …
    assert [(p.prompt, p.seed) for p in probes.probes(zorb)] == [
        ("zorb", 10), ("zorb", 11), ("(zorb:1.2), white background", 10), ("(zorb:1.2), white background", 11)]
    assert len(probes.all_probes()) == 4 + 3 + 3
    more = probes.with_samples(5)
    assert more.settings_for(more.concept("zorb")).samples_per_prompt == 5
    assert probes.fingerprint() != probes.with_samples(5).fingerprint()


@pytest.mark.parametrize("change, expected", [
    (("judge = \"toy\"", "judge = \"oracle\""), "judge: Input should be 'toy', 'tagger' or 'clip'"),
    (("role = \"retain\"", "role = \"keep\""), "concepts.1.role: Input should be 'target', 'retain' or 'uncond'"),
    (("steps = 4", "steps = 4\nsteps_typo = 3"), "sampling.steps_typo: unknown key"),
    (("toy = { colour = \"red\", shape = \"circle\" }", "toy = { colour = \"red\" }\nexpected = [\"x\"]"),
     "concepts.1.expected: unknown key"),
    (("width = 32", "width = 30"), "sampling.width: Input should be a multiple of 8"),
    (("prompts = [\"red, circle\"]", "prompts = []"), "give at least one prompt"),
    (("role = \"uncond\"", "role = \"uncond\"\nprompts = [\"x\"]"), "role 'uncond' samples the empty prompt"),
    (("name = \"red circle\"", "name = \"zorb\""), "concept names must be unique: zorb repeated"),
])
def test_bad_probes_file_is_one_line_naming_file_and_key(tmp_path, change, expected):
    path = write(tmp_path, MINIMAL.replace(*change))
    with pytest.raises(TunelabError) as error:
        load_probes(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_bad_sampler_is_refused(tmp_path):
    with pytest.raises(TunelabError, match="sampling.sampler"):
        load_probes(write(tmp_path, MINIMAL.replace("steps = 4", "steps = 4\nsampler = \"Euler z\"")))


def test_judge_that_cannot_judge_a_concept_is_refused_before_sampling(tmp_path):
    probes = load_probes(write(tmp_path, MINIMAL.replace("toy = { colour = \"red\", shape = \"circle\" }",
                                                         "expect = [\"red\", \"circle\"]")))
    with pytest.raises(TunelabError, match="concept 'red circle' cannot be judged by the toy judge"):
        probes.check_judge(make_judge("toy"))
    with pytest.raises(TunelabError, match="toy judge famil"):
        load_probes(write(tmp_path, MINIMAL.replace("shape = \"star\"", "hat = \"star\""), "b.toml")).check_judge(
            make_judge("toy"))
    with pytest.raises(TunelabError, match="the tagger judge needs its model folder"):
        make_judge("tagger")


def test_cli_refuses_bad_probes_file_in_one_line(tmp_path):
    path = write(tmp_path, MINIMAL.replace("role = \"retain\"", "role = \"keep\""))
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "score", str(path), "--base", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: concepts.1.role") and len(result.stderr.splitlines()) == 1


def test_shipped_toy_probes_cover_every_role_and_both_judges():
    probes = load_toy_probes()
    assert probes.path == TOY_PROBES
    roles = {c.role for c in probes.concepts}
    assert roles == {"target", "retain", "uncond"}
    probes.check_judge(make_judge("toy"))
    # every judged concept also says what the tagger must see
    assert all(c.expect for c in probes.concepts if c.role != "uncond")
    assert {c.name for c in probes.by_role("target")} >= {"zorb", "kiko"}


def test_readme_probes_example_parses(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[[concepts]]" in b)
    probes = load_probes(write(tmp_path, block))
    assert [c.role for c in probes.concepts] == ["target", "retain", "uncond"]
    assert probes.spec.judge == "tagger" and probes.spec.judge_options.path == tmp_path / "wd-eva02-large-tagger-v3"
    assert probes.settings_for(probes.concept("hatsune miku")).samples_per_prompt == 32
    assert probes.spec.thresholds.learned_min_gain == 0.20
