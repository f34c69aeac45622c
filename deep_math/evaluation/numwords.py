"""English number words -> digits, for answers written in words ("Three trucks will be needed").

Cardinals only: `zero` .. `nineteen`, the tens, `hundred`, `thousand`, `million`, `billion`,
joined by spaces, hyphens or `and` ("three hundred and five" -> 305, "twenty-one" -> 21), plus a
trailing "and a half" / "and a quarter" (-> 3.5, 3.25).

What is deliberately NOT converted, so that hard negatives stay wrong:
- ordinals and fractions: "third", "the first", "one-third", "three quarters" (a number word
  followed by a fraction word is left as it is);
- pronoun uses of "one" ("no one", "one of them", "this one"): "one" alone is converted only when
  a noun-like word or the end of the sentence follows it, never before "of" or after "no"/"this"/
  "that"/"each"/"any"/"every"/"which";
- number words glued to other letters ("someone", "often", "tenth").
"""

from __future__ import annotations

import re

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_WORD = "|".join(sorted([*_UNITS, *_TENS, *_SCALES], key=len, reverse=True))
_FRACTION_WORDS = r"half|halves|thirds?|quarters?|fourths?|fifths?|sixths?|sevenths?|eighths?|ninths?|tenths?"
# A run of number words; the lookahead refuses a run followed by a fraction word ("one-third").
_PHRASE = re.compile(
    rf"\b(?:{_WORD})(?:(?:[\s-]+|\s+and\s+)(?:{_WORD}))*\b"
    rf"(?P<frac>\s+and\s+a\s+(?:half|quarter)\b)?"
    rf"(?![\s-]*(?:{_FRACTION_WORDS})\b)",
    re.IGNORECASE,
)
_PRONOUN_BEFORE = re.compile(r"\b(?:no|this|that|each|any|every|which|the|some)\s+$", re.IGNORECASE)
_PRONOUN_AFTER = re.compile(r"^\s*(?:of|another|by|or|at\s+a\s+time)\b", re.IGNORECASE)


def phrase_value(words: str) -> int | None:
    """The value of a cardinal phrase ("three hundred and five" -> 305), None if it is not one."""
    tokens = [t for t in re.split(r"[\s-]+", words.lower().strip()) if t and t != "and"]
    if not tokens:
        return None
    total, current, last = 0, 0, None
    for tok in tokens:
        if tok in _UNITS or tok in _TENS:
            value = _UNITS.get(tok, _TENS.get(tok))
            # "twenty one" is fine; "three four" or "twelve five" is not a number
            if last in ("unit", "teen") or (last == "tens" and (tok in _TENS or value >= 10)):
                return None
            current += value
            last = "tens" if tok in _TENS else ("teen" if value >= 10 else "unit")
        elif tok == "hundred":
            if current == 0 or current >= 100:
                return None
            current *= 100
            last = "scale"
        elif tok in _SCALES:
            if current == 0:
                return None
            total += current * _SCALES[tok]
            current, last = 0, "scale"
        else:
            return None
    return total + current


def _replace(match: re.Match, text: str) -> str:
    words = match.group(0)
    frac = match.group("frac")
    core = words[: len(words) - len(frac)] if frac else words
    value = phrase_value(core)
    if value is None:
        return words
    if core.strip().lower() == "one" and not frac:
        before, after = text[: match.start()], text[match.end() :]
        if _PRONOUN_BEFORE.search(before) or _PRONOUN_AFTER.match(after):
            return words
    if frac:
        return f"{value}.5" if "half" in frac.lower() else f"{value}.25"
    return str(value)


def words_to_digits(text: str) -> str:
    """`text` with each cardinal number phrase replaced by its digits (see module docstring)."""
    return _PHRASE.sub(lambda m: _replace(m, text), text)


_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mbox|textnormal)\s*\{(.*)\}$", re.DOTALL)


def whole_answer_in_words(answer: str) -> str | None:
    """Digits for an answer that is nothing but a number phrase ("three", `\\text{Twenty-one}`,
    "three and a half"), else None. Trailing punctuation is ignored."""
    s = answer.strip()
    m = _TEXT_WRAPPER.match(s)
    if m:
        s = m.group(1).strip()
    s = s.rstrip(".!").strip()
    if not s or not re.fullmatch(r"[A-Za-z\s-]+", s):
        return None
    converted = words_to_digits(s)
    return converted if re.fullmatch(r"\d+(?:\.\d+)?", converted) else None
