"""String rewrites applied to answers before math-verify parses them.

Each rewrite covers a form math-verify 0.9 misreads and a human grader accepts:
- unicode symbols (degree, minus, times, pi, sqrt, infinity, thin spaces) -> LaTeX;
- scientific notation `1.5e3` / `1.5E-3` -> an exact `\\cdot 10^{k}` product (math-verify reads
  `1.5e3` as `1.5 * e * 3`);
- a single-column `pmatrix`/`bmatrix` (a column vector) -> a tuple, so `(1, 2)` matches it;
- `%` is stripped when only one side has it (`25\\%` vs `25`).
And one that keeps hard negatives wrong:
- `rationalize_decimals`: decimal literals become exact fractions, used on the prediction when the
  gold has no decimal, so a rounded float (`0.333333` for `\\frac13`, `6.283185` for `2\\pi`) is not
  an exact answer while an exact decimal (`0.5` for `\\frac12`) still is.
"""

from __future__ import annotations

import re

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
    return column_vector_to_tuple(expand_scientific(unicode_to_latex(s))).strip()
