"""Output lengths in tokens, split into the model's own tokens and tool-output tokens.

Counts recorded by inference (`model_tokens`, `tool_tokens`) are used as they are. A sample that
lacks them (the minimal `{"text", "target"}` form) is measured by tokenizing its text: the fenced
`output` blocks are tool tokens, everything else (tool code included: the model wrote it) is
model tokens. The tokenizer is loaded only when some sample needs it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from deep_math.evaluation.extract import tool_output_text, without_tool_output
from deep_math.evaluation.records import GeneratedProblem

log = logging.getLogger(__name__)

_TOOL_CALL_OPEN = "<tool_call>"


def resolve_tokenizer(spec: Any) -> Any:
    """A tokenizer object (anything with `encode`) as is; None -> the embedded model's tokenizer;
    a string -> `deep_math.models.load_tokenizer(spec)` (a local HF folder or a hub id)."""
    if spec is not None and not isinstance(spec, str | os.PathLike) and hasattr(spec, "encode"):
        return spec
    from deep_math.models import load_tokenizer  # heavy (transformers): only when needed

    return load_tokenizer(None if spec is None else os.fspath(spec))


class LazyTokenizer:
    """Resolves `spec` (see `resolve_tokenizer`) on the first `encode` call, then reuses it."""

    def __init__(self, spec: Any = None):
        self.spec = spec
        self._tokenizer: Any = None

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        if self._tokenizer is None:
            self._tokenizer = resolve_tokenizer(self.spec)
            log.info("measuring lengths with tokenizer %s", self.spec or "of the embedded model")
        return count_ids(self._tokenizer, text)


def count_ids(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a minimal tokenizer without that keyword
        return list(tokenizer.encode(text))


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(count_ids(tokenizer, text)) if text else 0


def needs_tokenizer(problems: list[GeneratedProblem]) -> bool:
    return any(s.model_tokens is None or s.tool_tokens is None for p in problems for s in p.samples)


def fill_lengths(problems: list[GeneratedProblem], tokenizer: Any) -> int:
    """Fill missing token counts (and tool-call counts) from the text; returns how many samples
    were measured with the tokenizer."""
    measured = 0
    for problem in problems:
        for s in problem.samples:
            if s.tool_calls is None:
                s.tool_calls = s.text.count(_TOOL_CALL_OPEN)
            if s.model_tokens is not None and s.tool_tokens is not None:
                continue
            tool_text = tool_output_text(s.text)
            if s.tool_tokens is None:
                s.tool_tokens = count_tokens(tokenizer, tool_text)
            if s.model_tokens is None:
                s.model_tokens = count_tokens(tokenizer, without_tool_output(s.text))
            measured += 1
    return measured
