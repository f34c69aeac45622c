"""The generated file: one JSON line per problem, appended and flushed as problems finish.

Resuming is safe after a crash or kill -9 at any point: a truncated last line (a write cut
short) is removed, problems already in the file are skipped, and nothing is written twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# meta fields that must agree for a resumed run to extend an existing file (a key missing from
# an older file's meta is not compared)
RESUME_KEYS = (
    "model",
    "lora_path",
    "engine",
    "agent",
    "template",
    "samples",
    "max_agent_output",
    "max_steps",
    "dataset",
    "split",
    "sampling",
    "examples",
    "examples_sha256",
)

# Line separators that str.splitlines() would split a JSON line at; JSON allows them raw in strings.
_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def dumps_line(record: dict[str, Any]) -> str:
    """One JSON line: non-ASCII text kept readable, except line separators other than \\n
    (U+2028, U+2029, U+0085), escaped so that any line-splitting reader sees one record a line."""
    text = json.dumps(record, ensure_ascii=False)
    for raw, escaped in _SEPARATORS.items():
        text = text.replace(raw, escaped)
    return text


class GeneratedFile:
    """Append-only writer of generated-file records with resume."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        self.meta = meta
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        self.done_ids: set[str] = set()
        if self.path.exists():
            self._repair_and_scan()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _repair_and_scan(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: removing a truncated last line (%d bytes) left by an interrupted run",
                self.path,
                len(data) - end,
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        # Split on \n only: older files hold raw U+2028/U+2029/U+0085 inside JSON strings.
        for lineno, line in enumerate(data[:end].decode("utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{self.path}:{lineno} is not valid JSON ({exc}); fix or remove that line, "
                    "or start afresh with overwrite=true"
                ) from exc
            self._check_meta(rec.get("meta") or {}, lineno)
            self.done_ids.add(str(rec.get("id")))
        if self.done_ids:
            log.info("%s: resuming, %d problems already done", self.path, len(self.done_ids))

    def _check_meta(self, old: dict[str, Any], lineno: int) -> None:
        diffs = [
            f"{k}: {old.get(k)!r} in the file vs {self.meta.get(k)!r} now"
            for k in RESUME_KEYS
            if k in old and old.get(k) != self.meta.get(k)
        ]
        if diffs:
            keys = ", ".join(k for k in RESUME_KEYS if k in old and old.get(k) != self.meta.get(k))
            raise ValueError(
                f"{self.path}:{lineno} was generated with other settings, so this run cannot resume "
                f"it; differing keys: {keys} ({'; '.join(diffs)}). Write to a new file "
                "(generated_file=...), or overwrite=true to replace this one."
            )

    def write(self, record: dict[str, Any]) -> None:
        record_id = str(record["id"])
        if record_id in self.done_ids:
            raise ValueError(f"problem id {record_id!r} is already in {self.path}")
        self._fh.write(dumps_line(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done_ids.add(record_id)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> GeneratedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
