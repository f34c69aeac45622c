"""String rewrites applied to answers before math-verify parses them.

Each rewrite covers a form math-verify 0.9 misreads and a human grader accepts:
- unicode symbols (degree, minus, times, pi, sqrt, infinity, thin spaces) -> LaTeX;
- scientific notation `1.5e3` / `1.5E-3` -> an exact `\\cdot 10^{k}` product (math-verify reads
  `1.5e3` as `1.5 * e * 3`);
- a scalar factored out of a matrix or vector (`\\frac{1}{49}\\begin{pmatrix}16\\\\48\\end{pmatrix}`,
  `-2\\begin{bmatrix}...`) is multiplied into every entry (`\\frac{1}{49}\\cdot(16)`); only a factor
  that starts the answer or follows `=`, `+`, `-`, `(`, `,` is taken (never the `2` of `x^2\\begin...`),
  and never into a `vmatrix` (a determinant scales differently);
- a single-column `pmatrix`/`bmatrix` (a column vector) -> a tuple, so `(1, 2)` matches it;
- an answer that is only a number in words (`\\text{three}`, `Twenty-one`) -> digits (`numwords`);
- `%` is stripped when only one side has it (`25\\%` vs `25`).
And one that keeps hard negatives wrong:
- `rationalize_decimals`: decimal literals become exact fractions, used on the prediction when the
  gold has no decimal, so a rounded float (`0.333333` for `\\frac13`, `6.283185` for `2\\pi`) is not
  an exact answer while an exact decimal (`0.5` for `\\frac12`) still is.
"""

from __future__ import annotations

import re

from deep_math.evaluation.numwords import whole_answer_in_words

_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash
    "\u00b0": "^\\circ",  # degree
    "\u00d7": "\\times ",
    "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ",
    "\u00f7": "\\div ",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u221a": "\\sqrt",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u200b": "",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SCI = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_COLUMN = re.compile(r"\\begin\{([pb]matrix)\}(.*?)\\end\{\1\}", re.DOTALL)
_DECIMAL = re.compile(r"(?<![\w.])(\d*)\.(\d+)(?![\d.])")
_PERCENT = re.compile(r"\\?%")
_DOUBLE_CIRC = re.compile(r"\^\s*\{?\\circ\}?\s*\^\s*\{?\\circ\}?")


def unicode_to_latex(s: str) -> str:
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    return _DOUBLE_CIRC.sub(lambda _: "^\\circ", s)  # "90^\circ" written as "90^°"


def expand_scientific(s: str) -> str:
    return _SCI.sub(lambda m: f"{m.group(1)}\\cdot 10^{{{int(m.group(2))}}}", s)


def column_vector_to_tuple(s: str) -> str:
    def repl(m: re.Match) -> str:
        rows = [r.strip() for r in re.split(r"\\\\", m.group(2)) if r.strip()]
        if len(rows) < 2 or any("&" in r for r in rows):
            return m.group(0)  # a real matrix or a row vector: leave it to math-verify
        return "(" + ", ".join(rows) + ")"

    return _COLUMN.sub(repl, s)


# One factor of a scalar: a number, \frac/\dfrac with up to one nested brace level, \sqrt,
# \pi, a single letter; factors may be joined by \cdot / \times or juxtaposed.
_GROUP = r"\{(?:[^{}]|\{[^{}]*\})*\}"
_FACTOR = (
    rf"(?:\d+(?:\.\d+)?|\\[dt]?frac\s*(?:{_GROUP}|\d)\s*(?:{_GROUP}|\d)|\\sqrt\s*(?:{_GROUP}|\d+)"
    r"|\\pi\b|[a-zA-Z](?![a-zA-Z]))"
)
_SCALED_MATRIX = re.compile(
    r"(?P<lead>^|[=+(,]|(?<![\w}])-)(?P<sign>\s*-)?\s*"
    rf"(?P<scalar>(?:{_FACTOR}\s*(?:\\cdot|\\times)?\s*)*?)"
    r"\\begin\{(?P<env>[pb]?matrix)\}(?P<body>.*?)\\end\{(?P=env)\}",
    re.DOTALL,
)


def distribute_scalar(s: str) -> str:
    """Multiply a factored-out scalar into the entries of the matrix it multiplies."""

    def repl(m: re.Match) -> str:
        scalar = re.sub(r"\s*(?:\\cdot|\\times)\s*$", "", m.group("scalar").strip())
        sign = "-" if m.group("sign") else ""
        if not scalar and not sign:
            return m.group(0)
        factor = (sign + scalar) if scalar else "-1"
        rows = re.split(r"\\\\", m.group("body"))
        scaled = [
            " & ".join(f"{factor}\\cdot({cell.strip()})" for cell in row.split("&"))
            for row in rows
            if row.strip()
        ]
        env = m.group("env")
        return f"{m.group('lead')}\\begin{{{env}}}" + " \\\\ ".join(scaled) + f"\\end{{{env}}}"

    return _SCALED_MATRIX.sub(repl, s)


def has_decimal(s: str) -> bool:
    return bool(_DECIMAL.search(s))


def rationalize_decimals(s: str) -> str:
    def repl(m: re.Match) -> str:
        whole, frac = m.group(1) or "0", m.group(2)
        return f"\\frac{{{int(whole + frac)}}}{{{10 ** len(frac)}}}"

    return _DECIMAL.sub(repl, s)


def has_percent(s: str) -> bool:
    return bool(_PERCENT.search(s))


def strip_percent(s: str) -> str:
    return _PERCENT.sub("", s).strip()


def normalize(s: str) -> str:
    """The rewrites that apply to any answer, gold or prediction."""
    words = whole_answer_in_words(s)
    if words is not None:
        return words
    return column_vector_to_tuple(distribute_scalar(expand_scientific(unicode_to_latex(s)))).strip()
