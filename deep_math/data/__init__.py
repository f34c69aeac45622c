"""Problems to solve: the bundled sample, generated Mini-DeepMath problems (`mini:train`, ...), a
local .jsonl/.json/.parquet file, or a hub dataset.

`load_problems(source)` returns `Problem` records with string ids and answers; every column
other than the problem, answer and id keys is kept in `Problem.extra` (level, subject,
solution, ...). Known column aliases, used only while the key is left at its default:
answer -> `expected_answer` (OpenMathReasoning), id -> `unique_id` (MATH-500).

The hub is reached only for a source that is not a local file; without a network that fails
with a message saying how to pass a local file instead.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_FILE = Path(__file__).resolve().parent / "sample_problems.jsonl"
SAMPLE_NAMES = ("", "sample")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

# default key -> alternative column tried when the default is absent
ALIASES = {
    "answer": ("expected_answer",),
    "id": ("unique_id",),
}


class DataError(ValueError):
    """Problems could not be loaded; the message says which setting fixes it."""


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)


# --- reading rows -------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno} is not valid JSON: {exc}") from exc
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    """A JSON list of rows, a {column: [values]} table, or JSON lines under a .json name."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        columns = list(data)
        return [dict(zip(columns, values, strict=True)) for values in zip(*data.values(), strict=True)]
    if isinstance(data, dict):
        return [data]
    raise DataError(f"{path} holds a JSON {type(data).__name__}; expected a list of row objects.")


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _read_local(path: Path) -> list[dict[str, Any]]:
    if path.suffix not in READERS:
        raise DataError(f"Unsupported data file '{path}'; supported suffixes: {list(READERS)}.")
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file '{path}' not found (relative paths are resolved against the working "
            f"directory {Path.cwd()}). Pass an existing file, or leave hf_tag unset for the bundled sample."
        )
    return READERS[path.suffix](path)


def _load_hub(tag: str, split: str) -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a base dependency
        raise ImportError("The `datasets` package is needed for hub datasets: pip install datasets") from exc
    try:
        return datasets.load_dataset(tag, split=split)
    except OSError as exc:  # ConnectionError, DatasetNotFoundError and HTTP errors are OSErrors
        raise DataError(
            f"Could not load dataset '{tag}' from the Hugging Face Hub (no network here?). "
            f"Pass a local .jsonl/.parquet path: hf_tag=/path/to/file.jsonl, or use the bundled "
            f"sample (hf_tag unset). Cause: {type(exc).__name__}: {exc}"
        ) from exc


def _is_local(source: str) -> bool:
    return Path(source).suffix in LOCAL_SUFFIXES or Path(source).is_file()


# --- rows -> problems ---------------------------------------------------------------------------


def _resolve_key(key: str, columns: Sequence[str], setting: str, source: str) -> str | None:
    """The column to read for `key`: itself, a known alias of a default key, or None if absent."""
    if key in columns:
        return key
    for alias in ALIASES.get(key, ()):
        if alias in columns:
            log.info(
                "Dataset '%s' has no '%s' column; using '%s' (set %s to override).",
                source,
                key,
                alias,
                setting,
            )
            return alias
    return None


def _missing_key(kind: str, key: str, columns: Sequence[str], setting: str, source: str) -> DataError:
    return DataError(
        f"Rows of '{source}' have no {kind} column '{key}'. Columns: {sorted(columns)}. "
        f"Set {setting} to one of them, e.g. {setting}={_guess(kind, columns)}."
    )


def _guess(kind: str, columns: Sequence[str]) -> str:
    likely = {"problem": ("question", "prompt", "input"), "answer": ("solution", "target", "output", "label")}
    for name in likely.get(kind, ()):
        if name in columns:
            return name
    return sorted(columns)[0] if columns else "<column>"


def _to_problems(
    rows: Sequence[dict[str, Any]],
    indices: Sequence[int],
    source: str,
    problem_key: str,
    answer_key: str,
    id_key: str,
) -> list[Problem]:
    if not rows:
        return []
    columns = list(rows[0].keys())
    pk = _resolve_key(problem_key, columns, "problem_key", source)
    if pk is None:
        raise _missing_key("problem", problem_key, columns, "problem_key", source)
    ak = _resolve_key(answer_key, columns, "answer_key", source)
    if ak is None:
        raise _missing_key("answer", answer_key, columns, "answer_key", source)
    ik = _resolve_key(id_key, columns, "id_key", source)
    if ik is None and id_key != "id":
        log.warning("Dataset '%s' has no id column '%s'; using row indices as ids.", source, id_key)

    problems, empty_answers = [], 0
    for row, index in zip(rows, indices, strict=True):
        for key, kind, setting in ((pk, "problem", "problem_key"), (ak, "answer", "answer_key")):
            if key not in row:
                raise DataError(
                    f"Row {index} of '{source}' has no {kind} column '{key}' (its keys: {sorted(row)}). "
                    f"Fix the row or set {setting}."
                )
        answer = row[ak]
        if answer is None or str(answer).strip() == "":
            empty_answers += 1
        rid = row.get(ik) if ik else None
        extra = {k: v for k, v in row.items() if k not in (pk, ak, ik)}
        problems.append(
            Problem(
                id=str(index) if rid is None else str(rid),
                problem=str(row[pk]),
                answer="" if answer is None else str(answer),
                extra=extra,
            )
        )
    if empty_answers:
        log.warning("%d of %d problems from '%s' have an empty answer.", empty_answers, len(problems), source)
    return problems


def load_problems(
    source: str | None = None,
    split: str = "test",
    problem_key: str = "problem",
    answer_key: str = "answer",
    id_key: str = "id",
    limit: int | None = None,
    shuffle_seed: int | None = None,
) -> list[Problem]:
    """Load problems from `source`.

    source: None, "" or "sample" -> the bundled sample (easiest first); `mini:SPLIT[:N[:SEED]]`
    -> generated Mini-DeepMath problems (`deep_math/data/mini.py`); a path ending in
    .jsonl/.json/.parquet (relative to the cwd) -> that file; anything else -> a hub dataset
    tag loaded with `datasets.load_dataset(source, split=split)` (split is ignored for files).
    shuffle_seed: shuffle deterministically before `limit` is applied. Rows without an id get
    their index in the source as id. Missing keys raise DataError naming the setting to change.
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0 or None, got {limit}")
    name = "" if source is None else str(source).strip()
    if name in SAMPLE_NAMES:
        label, rows = "sample", _read_jsonl(SAMPLE_FILE)
    elif name.startswith("mini:"):  # the generated Mini-DeepMath family (deep_math/data/mini.py)
        from deep_math.data import mini

        try:
            label, rows = name, mini.rows(name)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    elif _is_local(name):
        label, rows = name, _read_local(Path(name).expanduser())
    else:
        label, rows = name, _load_hub(name, split)

    indices = list(range(len(rows)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(indices)
    if limit is not None:
        indices = indices[:limit]
    if isinstance(rows, list):
        picked = [rows[i] for i in indices]
    else:  # a datasets.Dataset: select first, so a limit does not materialize the whole table
        picked = rows.select(indices).to_list()
    problems = _to_problems(picked, indices, label, problem_key, answer_key, id_key)
    log.info("Loaded %d problems from %s", len(problems), label)
    return problems


def split_dev(problems: Sequence[Problem], dev_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, dev): `dev_size` problems drawn with `seed`; both keep the input order.

    The same problems, size and seed always give the same split (the paper's dev split is 150).
    """
    n = len(problems)
    if not 0 <= dev_size < n:
        raise DataError(f"dev_size ({dev_size}) must be >= 0 and < the number of problems ({n})")
    dev_idx = set(random.Random(seed).sample(range(n), dev_size))
    train = [p for i, p in enumerate(problems) if i not in dev_idx]
    dev = [p for i, p in enumerate(problems) if i in dev_idx]
    return train, dev


__all__ = ["DataError", "Problem", "load_problems", "split_dev", "SAMPLE_FILE"]
