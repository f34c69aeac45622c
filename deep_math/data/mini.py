"""Mini-DeepMath: a seeded task family where a 135M model needs the tool.

Every problem is an exact computation that a small model gets wrong by mental arithmetic and a
one- or two-line Python snippet gets right: multi-digit products and sums, remainders and modular
powers, gcd/lcm, binomial coefficients, sums of ranges and of squares, fractions, linear
equations (sympy), plus word-problem phrasings so the model has to turn text into code.

Structure: a *family* draws parameters and computes the answer (plain Python, no snippet
involved); a *template* is one phrasing of a family (math notation or a short story). Each family
has a canonical snippet (`MiniProblem.code`) that prints the answer: the SFT traces run it in the
sandbox (`deep_math/training/sft_data.py`).

Splits, disjoint two ways:
- by template: templates marked `held_out` appear only in `test` (new phrasings never seen in
  training); templates marked `rl` appear only in `rl` and `rl_dev`, the GRPO splits: phrasings
  the SFT has not seen (on its own phrasings the SFT adapter is all correct, so GRPO groups there
  have zero advantage), and that are not the test's held-out ones either;
- by content: a problem's split is a function of its text (sha256 bucket: 0 -> test, 1 -> dev,
  2-9 -> train; `rl` takes the train buckets, `rl_dev` the dev bucket), so no problem text is in
  two splits, whatever the seeds and sizes. `rl_mix` is GRPO's default: half `rl` problems, half
  `train` problems (seed + 1), shuffled; the `train` half keeps the SFT's phrasings in the
  batches, which stopped GRPO from forgetting them (see the README).
Within a split the draw is deterministic in (split, seed): `generate("train", 300, seed=0)`
always returns the same 300 problems.

Sources for `load_problems`: `mini:train`, `mini:dev`, `mini:test`, `mini:rl`, `mini:rl_dev`,
`mini:rl_mix` (default sizes below),
`mini:train:500` (size), `mini:train:500:7` (size and seed). The fixed test set is also shipped
as `deep_math/data/mini_test.jsonl` (= `mini:test`, rewritten by `python -m deep_math.data.mini`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

SPLITS = ("train", "dev", "test", "rl", "rl_dev", "rl_mix")
DEFAULT_SIZES = {"train": 400, "dev": 48, "test": 60, "rl": 400, "rl_dev": 48, "rl_mix": 400}
BUCKET = {"train": "train", "dev": "dev", "test": "test", "rl": "train", "rl_dev": "dev"}  # split_of
DEFAULT_SEED = 0
TEST_FILE = Path(__file__).resolve().parent / "mini_test.jsonl"
SOURCE_PREFIX = "mini:"

Params = dict[str, Any]


@dataclass(frozen=True)
class Template:
    """One phrasing. `text` is formatted with the family's parameters (str.format)."""

    name: str
    text: str
    held_out: bool = False  # test only
    rl: bool = False  # rl / rl_dev only


@dataclass(frozen=True)
class Family:
    """draw(rng) -> parameters; answer(params) -> the gold answer (a string math-verify reads);
    code: the snippet that prints the answer, formatted with the parameters; intro: the one
    reasoning line an SFT trace opens with."""

    name: str
    draw: Callable[[random.Random], Params]
    answer: Callable[[Params], str]
    code: str
    intro: str
    templates: tuple[Template, ...]


@dataclass
class MiniProblem:
    id: str
    problem: str
    answer: str
    code: str
    intro: str
    family: str
    template: str
    held_out: bool
    params: Params = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The JSON row (load_problems keeps the non-standard keys in `Problem.extra`)."""
        return asdict(self)


# --- families -----------------------------------------------------------------------------------


def _signed(n: int) -> str:
    """` + 5` / ` - 5`: a term after another one in an equation."""
    return f" + {n}" if n >= 0 else f" - {-n}"


def _frac_latex(q: Fraction) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def _draw_product(r: random.Random) -> Params:
    return {"a": r.randint(102, 989), "b": r.randint(1013, 9899)}


def _draw_sum(r: random.Random) -> Params:
    return {"a": r.randint(1013, 98999), "b": r.randint(1013, 98999), "c": r.randint(1013, 98999)}


def _draw_left(r: random.Random) -> Params:
    b, c = r.randint(1013, 9899), r.randint(1013, 9899)
    return {"a": b + c + r.randint(1013, 49999), "b": b, "c": c}


def _draw_powmod(r: random.Random) -> Params:
    return {
        "a": r.randint(3, 97),
        "e": r.randint(21, 199),
        "m": r.choice([7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 97, 100, 1000]),
    }


def _draw_mod(r: random.Random) -> Params:
    return {"a": r.randint(100_003, 9_999_999), "m": r.randint(13, 997)}


def _draw_gcd(r: random.Random) -> Params:
    g = r.randint(6, 97)
    x, y = r.randint(11, 99), r.randint(11, 99)
    while math.gcd(x, y) != 1 or x == y:
        x, y = r.randint(11, 99), r.randint(11, 99)
    return {"a": g * x, "b": g * y}


def _draw_lcm(r: random.Random) -> Params:
    g = r.randint(2, 12)
    return {"a": g * r.randint(7, 60), "b": g * r.randint(7, 60)}


def _draw_binom(r: random.Random) -> Params:
    return {"n": r.randint(12, 40), "k": r.randint(3, 7)}


def _draw_range_sum(r: random.Random) -> Params:
    a = r.randint(2, 300)
    return {"a": a, "b": a + r.randint(60, 3000)}


def _draw_square_sum(r: random.Random) -> Params:
    return {"n": r.randint(15, 120)}


def _draw_fraction(r: random.Random) -> Params:
    b, d = r.randint(3, 29), r.randint(3, 29)
    while b == d:
        d = r.randint(3, 29)
    op = r.choice(["+", "-", "*"])
    a, c = r.randint(1, 2 * b), r.randint(1, 2 * d)
    a, c = (a + 1 if a == b else a), (c + 1 if c == d else c)  # no whole numbers like 8/8
    return {"a": a, "b": b, "c": c, "d": d, "op": op,
            "op_tex": {"+": "+", "-": "-", "*": "\\times"}[op]}  # fmt: skip


def _fraction_value(p: Params) -> Fraction:
    x, y = Fraction(p["a"], p["b"]), Fraction(p["c"], p["d"])
    return {"+": x + y, "-": x - y, "*": x * y}[p["op"]]


def _draw_linear(r: random.Random) -> Params:
    a = r.randint(3, 19)
    c = r.randint(2, 19)
    while c == a:
        c = r.randint(2, 19)
    x, b = r.randint(-40, 40), r.randint(-99, 99)
    d = (a - c) * x + b  # so that a x + b = c x + d holds at x
    return {"a": a, "b": b, "c": c, "d": d, "b_term": _signed(b), "d_term": _signed(d)}


def _linear_solution(p: Params) -> Fraction:
    return Fraction(p["d"] - p["b"], p["a"] - p["c"])


FAMILIES: tuple[Family, ...] = (
    Family(
        "product", _draw_product, lambda p: str(p["a"] * p["b"]),
        "print({a} * {b})", "I multiply the two numbers with Python.",
        (
            Template("product.tex", "What is ${a} \\times {b}$?"),
            Template("product.words", "Compute the product of {a} and {b}."),
            Template("product.shelves", "A warehouse has {a} shelves and each shelf holds {b} boxes. How many boxes are in the warehouse?"),
            Template("product.printer", "A printer prints {b} pages per hour. How many pages does it print in {a} hours?", held_out=True),
            Template("product.crates", "Each of {a} crates contains {b} apples. How many apples are there altogether?", rl=True),
        ),
    ),
    Family(
        "sum", _draw_sum, lambda p: str(p["a"] + p["b"] + p["c"]),
        "print({a} + {b} + {c})", "I add the three numbers with Python.",
        (
            Template("sum.tex", "What is ${a} + {b} + {c}$?"),
            Template("sum.library", "A library had {a} books, bought {b} more in spring and {c} more in autumn. How many books does it have now?"),
            Template("sum.words", "Find the sum of {a}, {b} and {c}.", held_out=True),
            Template("sum.add", "Add {a}, {b} and {c}.", rl=True),
        ),
    ),
    Family(
        "left", _draw_left, lambda p: str(p["a"] - p["b"] - p["c"]),
        "print({a} - {b} - {c})", "I subtract both amounts with Python.",
        (
            Template("left.tex", "What is ${a} - {b} - {c}$?"),
            Template("left.money", "Tom had {a} dollars. He spent {b} dollars on a bike and {c} dollars on books. How many dollars does he have left?"),
            Template("left.tank", "A tank holds {a} liters of water. On Monday {b} liters are used and on Tuesday {c} liters. How many liters remain?", held_out=True),
            Template("left.take", "From {a}, take away {b} and then {c}. What remains?", rl=True),
        ),
    ),
    Family(
        "powmod", _draw_powmod, lambda p: str(pow(p["a"], p["e"], p["m"])),
        "print(pow({a}, {e}, {m}))", "I compute the modular power with Python.",
        (
            Template("powmod.words", "What is the remainder when ${a}^{{{e}}}$ is divided by {m}?"),
            Template("powmod.tex", "Compute ${a}^{{{e}}} \\bmod {m}$."),
            Template("powmod.find", "Find the remainder of ${a}^{{{e}}}$ modulo {m}.", held_out=True),
            Template("powmod.determine", "Determine ${a}^{{{e}}}$ mod {m}.", rl=True),
        ),
    ),
    Family(
        "mod", _draw_mod, lambda p: str(p["a"] % p["m"]),
        "print({a} % {m})", "I compute the remainder with Python.",
        (
            Template("mod.words", "What is the remainder when {a} is divided by {m}?"),
            Template("mod.tex", "Compute ${a} \\bmod {m}$."),
            Template("mod.candies", "{a} candies are shared equally among {m} children, each child getting as many as possible. How many candies are left over?", held_out=True),
            Template("mod.divided", "Find the remainder of {a} divided by {m}.", rl=True),
        ),
    ),
    Family(
        "gcd", _draw_gcd, lambda p: str(math.gcd(p["a"], p["b"])),
        "import math\nprint(math.gcd({a}, {b}))", "I compute the greatest common divisor with Python.",
        (
            Template("gcd.words", "What is the greatest common divisor of {a} and {b}?"),
            Template("gcd.tex", "Find $\\gcd({a}, {b})$."),
            Template("gcd.ribbons", "Two ribbons are {a} cm and {b} cm long. They are cut into equal pieces as long as possible with nothing left over. How long is each piece in cm?", held_out=True),
            Template("gcd.largest", "Determine the largest integer that divides both {a} and {b}.", rl=True),
        ),
    ),
    Family(
        "lcm", _draw_lcm, lambda p: str(math.lcm(p["a"], p["b"])),
        "import math\nprint(math.lcm({a}, {b}))", "I compute the least common multiple with Python.",
        (
            Template("lcm.words", "What is the least common multiple of {a} and {b}?"),
            Template("lcm.tex", "Find $\\operatorname{{lcm}}({a}, {b})$."),
            Template("lcm.lights", "One light blinks every {a} seconds and another every {b} seconds. They blink together now. After how many seconds do they next blink together?", held_out=True),
            Template("lcm.smallest", "Determine the smallest positive integer divisible by both {a} and {b}.", rl=True),
        ),
    ),
    Family(
        "binom", _draw_binom, lambda p: str(math.comb(p["n"], p["k"])),
        "import math\nprint(math.comb({n}, {k}))", "I count the choices with a binomial coefficient in Python.",
        (
            Template("binom.tex", "What is $\\binom{{{n}}}{{{k}}}$?"),
            Template("binom.students", "In how many ways can {k} students be chosen from a class of {n}?"),
            Template("binom.committee", "How many different committees of {k} people can be formed from {n} people?", held_out=True),
            Template("binom.subsets", "How many {k}-element subsets does a set of {n} elements have?", rl=True),
        ),
    ),
    Family(
        "range_sum", _draw_range_sum, lambda p: str((p["a"] + p["b"]) * (p["b"] - p["a"] + 1) // 2),
        "print(sum(range({a}, {b} + 1)))", "I add up the range with Python.",
        (
            Template("range_sum.words", "What is the sum of all integers from {a} to {b}?"),
            Template("range_sum.tex", "Compute $\\sum_{{i={a}}}^{{{b}}} i$."),
            Template("range_sum.seats", "A theater has rows numbered {a} to {b}, and row number r has r seats. How many seats are there in total?", held_out=True),
            Template("range_sum.through", "Add all the whole numbers from {a} through {b}.", rl=True),
        ),
    ),
    Family(
        "square_sum", _draw_square_sum, lambda p: str(p["n"] * (p["n"] + 1) * (2 * p["n"] + 1) // 6),
        "print(sum(i**2 for i in range(1, {n} + 1)))", "I add up the squares with Python.",
        (
            Template("square_sum.tex", "What is $1^2 + 2^2 + \\dots + {n}^2$?"),
            Template("square_sum.words", "Find the sum of the squares of the integers from 1 to {n}.", held_out=True),
            Template("square_sum.sigma", "Compute the sum $\\sum_{{i=1}}^{{{n}}} i^2$.", rl=True),
        ),
    ),
    Family(
        "fraction", _draw_fraction, lambda p: _frac_latex(_fraction_value(p)),
        "from fractions import Fraction\nprint(Fraction({a}, {b}) {op} Fraction({c}, {d}))",
        "I compute with exact fractions in Python.",
        (
            Template("fraction.tex", "Compute $\\frac{{{a}}}{{{b}}} {op_tex} \\frac{{{c}}}{{{d}}}$ as a fraction in lowest terms."),
            Template("fraction.what", "What is $\\frac{{{a}}}{{{b}}} {op_tex} \\frac{{{c}}}{{{d}}}$? Give the answer in lowest terms.", held_out=True),
            Template("fraction.evaluate", "Evaluate $\\frac{{{a}}}{{{b}}} {op_tex} \\frac{{{c}}}{{{d}}}$ and simplify.", rl=True),
        ),
    ),
    Family(
        "linear", _draw_linear, lambda p: _frac_latex(_linear_solution(p)),
        "import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(sp.Eq({a}*x + {b}, {c}*x + {d}), x)[0])",
        "I solve the equation with sympy.",
        (
            Template("linear.solve", "Solve for $x$: ${a}x{b_term} = {c}x{d_term}$."),
            Template("linear.find", "Find $x$ if ${a}x{b_term} = {c}x{d_term}$.", held_out=True),
            Template("linear.value", "What value of $x$ satisfies ${a}x{b_term} = {c}x{d_term}$?", rl=True),
        ),
    ),
)  # fmt: skip

FAMILY_BY_NAME = {f.name: f for f in FAMILIES}


# --- splits -------------------------------------------------------------------------------------


def split_of(problem_text: str) -> str:
    """The split a problem text belongs to (content hash bucket; held-out templates aside)."""
    bucket = int(hashlib.sha256(problem_text.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def templates_for(split: str) -> list[tuple[Family, Template]]:
    """(family, template) pairs a split draws from: rl/rl_dev only the `rl` ones; test every
    other template; train/dev the ones neither held out nor `rl`."""
    if split in ("rl", "rl_dev"):
        return [(f, t) for f in FAMILIES for t in f.templates if t.rl]
    return [(f, t) for f in FAMILIES for t in f.templates if not t.rl and (split == "test" or not t.held_out)]


def _one(family: Family, template: Template, r: random.Random) -> MiniProblem:
    params = family.draw(r)
    return MiniProblem(
        id="",
        problem=template.text.format(**params),
        answer=family.answer(params),
        code=family.code.format(**params),
        intro=family.intro,
        family=family.name,
        template=template.name,
        held_out=template.held_out,
        params=params,
    )


def generate(split: str, n: int, seed: int = DEFAULT_SEED) -> list[MiniProblem]:
    """`n` distinct problems of `split`, deterministic in (split, n, seed).

    Templates are drawn round-robin (shuffled once), so every family and phrasing is represented;
    a draw whose text hashes to another split, or repeats one already drawn, is redrawn."""
    if split not in SPLITS:
        raise ValueError(f"Unknown mini split '{split}'; available: {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if split == "rl_mix":  # problems keep their own split's ids
        mixed = generate("rl", n - n // 2, seed) + generate("train", n // 2, seed + 1)
        random.Random(seed).shuffle(mixed)
        return mixed
    r = random.Random(f"mini-{split}-{seed}")
    pool = templates_for(split)
    r.shuffle(pool)
    out: list[MiniProblem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        family, template = pool[len(out) % len(pool)]
        p = _one(family, template, r)
        attempts += 1
        if attempts > 200 * (n + 10):
            raise RuntimeError(f"could not draw {n} distinct {split} problems")
        # held-out templates are test-only already; the hash keeps shared templates disjoint
        if (template.held_out or split_of(p.problem) == BUCKET[split]) and p.problem not in seen:
            seen.add(p.problem)
            p.id = f"mini-{split}-{seed}-{len(out):04d}"
            out.append(p)
    return out


def parse_source(source: str) -> tuple[str, int, int]:
    """`mini:SPLIT[:N[:SEED]]` -> (split, n, seed)."""
    parts = source[len(SOURCE_PREFIX) :].split(":") if source.startswith(SOURCE_PREFIX) else []
    if not 1 <= len(parts) <= 3 or parts[0] not in SPLITS:
        raise ValueError(
            f"Bad mini source '{source}'; expected mini:SPLIT[:N[:SEED]] with SPLIT in {list(SPLITS)}, "
            "e.g. mini:train, mini:test, mini:train:500:7"
        )
    split = parts[0]
    try:
        n = int(parts[1]) if len(parts) > 1 else DEFAULT_SIZES[split]
        seed = int(parts[2]) if len(parts) > 2 else DEFAULT_SEED
    except ValueError:
        raise ValueError(f"Bad mini source '{source}': N and SEED must be integers") from None
    return split, n, seed


def rows(source: str) -> list[dict[str, Any]]:
    """Rows for `load_problems(source)`, source = `mini:SPLIT[:N[:SEED]]`."""
    split, n, seed = parse_source(source)
    return [p.row() for p in generate(split, n, seed)]


def write_jsonl(problems: list[MiniProblem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.row()) + "\n")
    return path


def main() -> None:
    """Rewrite the shipped test file (`mini:test`)."""
    path = write_jsonl(generate("test", DEFAULT_SIZES["test"]), TEST_FILE)
    print(f"Wrote {DEFAULT_SIZES['test']} problems to {path}")  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
