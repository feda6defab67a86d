import pytest
import torch

from tunelab.evaluate.prompt_syntax import parse_prompt
from tunelab.models.text_conditioning import BREAK, encode_prompts


def weights_of(prompt: str) -> dict[str, float]:
    return {text.strip(", "): weight for text, weight in parse_prompt(prompt) if text.strip(", ")}


@pytest.mark.parametrize(
    "prompt, word, weight",
    [
        ("(x)", "x", 1.1),
        ("((x))", "x", 1.1 * 1.1),
        ("(((x)))", "x", 1.1**3),
        ("(x:1.5)", "x", 1.5),
        ("( x : 0.25 )", "x", 0.25),
        ("[x]", "x", 1 / 1.1),
        ("[[x]]", "x", 1 / 1.1**2),
        ("(x:0)", "x", 0.0),
        ("((x:2))", "x", 2 * 1.1),
        ("[(x:2)]", "x", 2 / 1.1),
        ("(unclosed", "unclosed", 1.1),  # an unclosed bracket reaches to the end
    ],
)
def test_each_emphasis_rule(prompt, word, weight):
    assert weights_of(prompt)[word] == pytest.approx(weight, rel=1e-12)


def test_user_prompts_from_the_field():
    w = weights_of("(car:0), [[rx7]], (1boy:0), [kagamine_len]")
    assert w == pytest.approx({"car": 0.0, "rx7": 1 / 1.21, "1boy": 0.0, "kagamine_len": 1 / 1.1})
    w = weights_of(r"(solo:0), (aodai:0.98), [[braid]], [astolfo_\(fate\)]")
    assert w == pytest.approx({"solo": 0.0, "aodai": 0.98, "braid": 1 / 1.21, "astolfo_(fate)": 1 / 1.1})


def test_nesting_multiplies_only_inside():
    segments = parse_prompt("a (b [c] d) e")
    assert [t for t, _ in segments] == ["a ", "b ", "c", " d", " e"]
    assert [w for _, w in segments] == pytest.approx([1.0, 1.1, 1.0, 1.1, 1.0])


def test_escapes_are_literal_and_unmatched_closers_are_text():
    assert parse_prompt(r"astolfo_\(fate\)") == [("astolfo_(fate)", 1.0)]
    assert parse_prompt(r"\[x\] \\ y") == [("[x] \\ y", 1.0)]
    assert parse_prompt("a) b] c:1.5)") == [("a) b] c:1.5)", 1.0)]
    assert parse_prompt("time: 12:30") == [("time: 12:30", 1.0)]


def test_break_splits_and_merging():
    assert parse_prompt("red circle BREAK (blue) square") == [
        ("red circle", 1.0),
        ("BREAK", BREAK),
        ("blue", pytest.approx(1.1)),
        (" square", 1.0),
    ]
    assert parse_prompt("BREAKFAST") == [("BREAKFAST", 1.0)]  # only the whole word
    assert parse_prompt("") == [("", 1.0)]
    assert parse_prompt("(a)(b)") == [("ab", pytest.approx(1.1))]


@torch.no_grad()
def test_weights_scale_token_embeddings_then_restore_the_mean(tiny_sdxl_model):
    """On real tiny-SDXL embeddings: (circle:1.5) scales circle's token vector by 1.5 relative to the plain prompt,
    then one common factor per encoder restores that encoder's chunk mean (A1111)."""
    m = tiny_sdxl_model
    width_1 = m.text_encoders[0].config.hidden_size
    plain = encode_prompts(m, [parse_prompt("red circle")]).prompt_embeds[0]
    weighted = encode_prompts(m, [parse_prompt("red (circle:1.5)")]).prompt_embeds[0]
    zeroed = encode_prompts(m, [parse_prompt("red (circle:0)")]).prompt_embeds[0]
    token_weights = torch.ones(77, 1)
    token_weights[2] = 1.5  # BOS, red, circle, EOS, pad…
    for part in (slice(0, width_1), slice(width_1, None)):  # each encoder's hidden states separately
        p, w = plain[:, part], weighted[:, part]
        assert w.mean() == pytest.approx(p.mean().item(), rel=1e-5)  # mean restored
        factor = p.mean() / (p * token_weights).mean()
        assert abs(factor - 1) > 1e-3  # the restore really rescales
        assert torch.allclose(w, p * token_weights * factor, atol=1e-5)
    assert torch.count_nonzero(zeroed[2]) == 0 and torch.count_nonzero(zeroed[1]) == zeroed.shape[1]
