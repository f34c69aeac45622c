"""Command-line glue for evaluation.py."""

from __future__ import annotations

LIST_KEYS = ("generated_file", "labels")


def quote_list_overrides(argv: list[str], keys: tuple[str, ...] = LIST_KEYS) -> list[str]:
    """Make the paper's `generated_file=a.jsonl,b.jsonl` work in a single (non-multirun) Hydra run.

    Hydra reads an unquoted `a,b` value as a sweep and refuses it without --multirun; we quote it
    (`generated_file='a,b'`) and the schema splits it on commas. Lists (`[a,b]`), quoted values,
    `--multirun` and other keys are left alone."""
    if "--multirun" in argv or "-m" in argv:
        return argv
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in keys and "," in value and value[:1] not in "[\"'":
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")
            arg = f"{key}='{escaped}'"
        out.append(arg)
    return out
