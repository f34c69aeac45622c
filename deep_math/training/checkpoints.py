"""Finding the checkpoint to resume from.

transformers writes a checkpoint folder in place (model, optimizer, scheduler, RNG states) and its
trainer_state.json last. A run killed while saving (a SLURM time limit, a preemption) leaves a
newest checkpoint-N without a readable trainer_state.json, and transformers' own
`get_last_checkpoint` would resume from it: a crash, or worse, half-written weights. Here a
checkpoint counts only once its trainer_state.json parses; incomplete newer ones are skipped with a
warning (the resumed run overwrites them when it saves that step again).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The checkpoint-N folders of a training output folder, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, key=lambda item: -item[0])]


def read_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's trainer state, or None when it is missing or unreadable (an interrupted save)."""
    try:
        state = json.loads((Path(checkpoint) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint whose trainer_state.json parses; None when there is none."""
    for path in checkpoint_dirs(output_dir):
        if read_state(path) is not None:
            return str(path)
        log.warning(
            "Skipping %s: no readable %s (the run was stopped while saving it); resuming from an older one",
            path,
            STATE_FILE,
        )
    return None
