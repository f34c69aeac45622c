"""Reading generated files (inference.py output) for evaluation.

Accepted per line: the full record `{"id", "problem", "target", "text", "samples", "meta"}`
(`deep_math.records` names its fields and builds it for inference) and the original minimal form
`{"text": str | [str], "target": str}` (`answer` is accepted for `target`).
When `samples` is present its entries give text and counts; otherwise each `text` becomes a sample
without counts (lengths are then measured with a tokenizer). A malformed line is reported with its
line number: skipped with a warning (listed in the results), or an error with `strict=True`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deep_math.records import FINISH_REASON, ID, META, PROBLEM, SAMPLES, STAT_FIELDS, TARGET, TEXT

log = logging.getLogger(__name__)

TRUNCATED = frozenset({"budget", "max_steps"})


class RecordError(ValueError):
    """A generated-file line that cannot be evaluated; the message names the file and line."""


@dataclass
class Sample:
    """One generated trace and what inference counted about it (None: not recorded)."""

    text: str
    model_tokens: int | None = None
    tool_tokens: int | None = None
    tool_calls: int | None = None
    tool_errors: int | None = None
    tool_timeouts: int | None = None
    sandbox_errors: int | None = None  # absent from files written before it was counted
    steps: int | None = None
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason in TRUNCATED


@dataclass
class GeneratedProblem:
    """One line of a generated file: a problem, its gold answer and k samples."""

    index: int  # position among the evaluated problems (0-based)
    line: int  # line number in the file (1-based)
    id: str
    target: str
    samples: list[Sample]
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # the problem statement, when the record has one


@dataclass
class ReadResult:
    problems: list[GeneratedProblem]
    malformed: list[str]  # "path:line: reason" for each skipped line


_LEGACY_TARGET = "answer"  # the minimal form's other name for TARGET


def _int_or_none(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"sample field '{key}' must be a number, got {value!r}")
    return int(value)


def _sample(obj: Any) -> Sample:
    if isinstance(obj, str):
        return Sample(text=obj)
    if not isinstance(obj, dict) or not isinstance(obj.get(TEXT), str):
        raise RecordError(f"a sample must be a string or an object with a '{TEXT}' string, got {obj!r:.80}")
    counts = {k: _int_or_none(obj.get(k), k) for k in STAT_FIELDS}
    reason = obj.get(FINISH_REASON)
    return Sample(text=obj[TEXT], finish_reason=None if reason is None else str(reason), **counts)


def parse_record(obj: Any, index: int, line: int) -> GeneratedProblem:
    """One decoded JSON line -> GeneratedProblem; RecordError says what is wrong."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    target = obj.get(TARGET, obj.get(_LEGACY_TARGET))
    if target is None or (isinstance(target, str) and not target.strip()):
        raise RecordError(f"missing gold answer ('{TARGET}')")
    if isinstance(target, bool) or not isinstance(target, str | int | float):
        raise RecordError(f"'{TARGET}' must be a string or number, got {target!r:.80}")
    if obj.get(SAMPLES) is not None:
        if not isinstance(obj[SAMPLES], list):
            raise RecordError(f"'{SAMPLES}' must be a list")
        samples = [_sample(s) for s in obj[SAMPLES]]
    else:
        text = obj.get(TEXT)
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RecordError(f"'{TEXT}' must be a string or a list of strings")
        samples = [Sample(text=t) for t in texts]
    if not samples:
        raise RecordError(f"no samples ('{TEXT}' / '{SAMPLES}' is empty)")
    meta = obj.get(META) if isinstance(obj.get(META), dict) else {}
    pid = obj.get(ID)
    statement = obj.get(PROBLEM)
    return GeneratedProblem(
        index,
        line,
        str(pid if pid is not None else index),
        str(target),
        samples,
        meta,
        statement if isinstance(statement, str) else "",
    )


def read_generated(path: str | os.PathLike, limit: int | None = None, strict: bool = False) -> ReadResult:
    """Problems of a generated file (the first `limit` valid ones). Blank lines are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generated file not found: {path}")
    problems: list[GeneratedProblem] = []
    malformed: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if limit is not None and len(problems) >= limit:
                break
            if not raw.strip():
                continue
            try:
                problems.append(parse_record(json.loads(raw), len(problems), lineno))
            except (json.JSONDecodeError, RecordError) as exc:
                where = f"{path}:{lineno}: {exc}"
                if strict:
                    raise RecordError(f"{where} (strict=true; set strict=false to skip such lines)") from exc
                log.warning("skipping malformed line %s", where)
                malformed.append(where)
    return ReadResult(problems, malformed)
