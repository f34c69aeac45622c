"""Mini-DeepMath generator: deterministic by seed, disjoint splits, answers right."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from deep_math.data import DataError, load_problems, mini

# Independent recomputation of every family's answer from its parameters (not the generator's code).
EXPECTED = {
    "product": lambda p: p["a"] * p["b"],
    "sum": lambda p: p["a"] + p["b"] + p["c"],
    "left": lambda p: p["a"] - p["b"] - p["c"],
    "powmod": lambda p: (p["a"] ** p["e"]) % p["m"],
    "mod": lambda p: p["a"] - (p["a"] // p["m"]) * p["m"],
    "gcd": lambda p: max(d for d in range(1, min(p["a"], p["b"]) + 1) if p["a"] % d == 0 and p["b"] % d == 0),
    "lcm": lambda p: p["a"] * p["b"] // math.gcd(p["a"], p["b"]),
    "binom": lambda p: math.factorial(p["n"]) // (math.factorial(p["k"]) * math.factorial(p["n"] - p["k"])),
    "range_sum": lambda p: sum(range(p["a"], p["b"] + 1)),
    "square_sum": lambda p: sum(i * i for i in range(1, p["n"] + 1)),
    "fraction": lambda p: eval(f"Fraction({p['a']}, {p['b']}) {p['op']} Fraction({p['c']}, {p['d']})"),  # noqa: S307
    "linear": lambda p: Fraction(p["d"] - p["b"], p["a"] - p["c"]),
}


def as_value(answer: str):
    """Gold strings are integers or \\frac{p}{q} (possibly negative)."""
    if "\\frac" in answer:
        sign = -1 if answer.startswith("-") else 1
        num, den = answer.split("\\frac{")[1].rstrip("}").split("}{")
        return sign * Fraction(int(num), int(den))
    return int(answer)


def test_every_family_has_a_held_out_template():
    assert set(EXPECTED) == set(mini.FAMILY_BY_NAME)
    for family in mini.FAMILIES:
        assert any(t.held_out for t in family.templates), family.name
        assert any(not t.held_out for t in family.templates), family.name


def test_deterministic_by_seed():
    a = [p.row() for p in mini.generate("train", 50, seed=3)]
    assert a == [p.row() for p in mini.generate("train", 50, seed=3)]
    assert a != [p.row() for p in mini.generate("train", 50, seed=4)]


def test_splits_disjoint_by_text_and_template():
    splits = {s: mini.generate(s, n) for s, n in mini.DEFAULT_SIZES.items()}
    texts = {s: {p.problem for p in ps} for s, ps in splits.items()}
    assert all(len(texts[s]) == len(splits[s]) for s in splits)  # no duplicates inside a split
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    held_out = {t.name for f in mini.FAMILIES for t in f.templates if t.held_out}
    assert not held_out & {p.template for p in splits["train"] + splits["dev"]}
    assert held_out <= {p.template for p in splits["test"]}  # every held-out phrasing is tested
    # another seed's train split never reaches into test either (content split, not seed luck)
    assert not {p.problem for p in mini.generate("train", 300, seed=11)} & texts["test"]


def test_rl_splits_use_only_their_own_phrasings():
    """GRPO's phrasings: unseen by the SFT (train/dev) and not the test's held-out ones."""
    splits = {s: mini.generate(s, n) for s, n in mini.DEFAULT_SIZES.items()}
    rl_templates = {t.name for f in mini.FAMILIES for t in f.templates if t.rl}
    assert {mini.FAMILY_BY_NAME[name.split(".")[0]].name for name in rl_templates} == set(EXPECTED)
    for split, problems in splits.items():
        used = {p.template for p in problems}
        if split == "rl_mix":
            continue
        assert (used <= rl_templates) if split in ("rl", "rl_dev") else not used & rl_templates, split
    assert rl_templates == {p.template for p in splits["rl"]}
    texts = {s: {p.problem for p in ps} for s, ps in splits.items()}
    assert not texts["rl"] & texts["rl_dev"]
    # rl_mix: half rl, half train (another seed), none of it in rl_dev or test
    mix = splits["rl_mix"]
    assert len({p.problem for p in mix}) == len(mix) == mini.DEFAULT_SIZES["rl_mix"]
    assert sum(p.template in rl_templates for p in mix) == len(mix) // 2
    assert not {p.problem for p in mix} & (texts["rl_dev"] | texts["test"] | texts["dev"])
    assert [p.row() for p in mix] == [p.row() for p in mini.generate("rl_mix", len(mix))]
    # adding the rl phrasings left the shipped test file as it was
    shipped = [json.loads(line) for line in mini.TEST_FILE.read_text().splitlines()]
    assert shipped == [p.row() for p in splits["test"]]


def test_answers_recomputed_independently():
    for split, n in mini.DEFAULT_SIZES.items():
        for p in mini.generate(split, n):
            assert as_value(p.answer) == EXPECTED[p.family](p.params), (p.id, p.problem, p.answer)


def test_snippets_print_the_answer():
    # the canonical snippet, run as plain Python here (the SFT builder runs it in the sandbox)
    import contextlib
    import io

    for p in mini.generate("test", 40):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(p.code, {})  # noqa: S102 - generator-written code
        printed = buf.getvalue().strip()
        value = Fraction(printed) if "/" in printed else int(printed)
        assert value == as_value(p.answer), (p.code, printed, p.answer)


def test_shipped_test_file_is_the_test_split():
    rows = [json.loads(line) for line in mini.TEST_FILE.read_text().splitlines() if line.strip()]
    assert rows == [p.row() for p in mini.generate("test", mini.DEFAULT_SIZES["test"])]


def test_load_problems_sources():
    ps = load_problems("mini:dev:10:2")
    assert len(ps) == 10 and ps[0].id.startswith("mini-dev-2-")
    assert {"code", "intro", "family", "template", "params"} <= set(ps[0].extra)
    from_file = load_problems(str(mini.TEST_FILE))
    assert [(p.problem, p.answer) for p in from_file] == [
        (p.problem, p.answer) for p in load_problems("mini:test")
    ]
    with pytest.raises(DataError, match="mini:SPLIT"):
        load_problems("mini:valid")
