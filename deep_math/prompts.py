"""Prompt templates (selected by name), few-shot examples, and chat rendering to token ids.

A template turns one problem into chat messages: a system message (the instruction, plus the
few-shot examples for templates that use them) and a user message holding the problem. The
assistant turn is left open (`add_generation_prompt=True`); the agent loop generates inside it.

- "agent": the DeepMath tool protocol. The model writes Python between `<tool_call>` and
  `</tool_call>`; the sandbox's result is folded back as a fenced `output` block in the same
  assistant turn; the final answer goes in `\\boxed{}`.
- "baseline": plain step-by-step reasoning, no tools.
- "mini": the tool protocol in a few lines (~70 tokens, no few-shot block), for the Mini-DeepMath
  recipe: a 135M model learns the format by SFT (`deep_math/training/sft.py`), not in context.

Few-shot examples live in `deep_math/fewshot.txt` (examples separated by a line `---`, each
`Problem: ...` then `Solution: ...`); tests re-run its snippets so the shown outputs stay exact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deep_math.agent.config import TOOL_CLOSE, TOOL_OPEN
from deep_math.config_utils import unknown_name_error

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
DEFAULT_EXAMPLES = "deep_math/fewshot.txt"

EXAMPLE_SEPARATOR = "---"

# What the instruction tells the model it may import; the sandbox's allow-list is the authority.
AVAILABLE_MODULES = (
    "math",
    "cmath",
    "fractions",
    "decimal",
    "itertools",
    "functools",
    "collections",
    "statistics",
    "numpy",
    "sympy",
    "scipy",
)

AGENT_INSTRUCTION = f"""\
You are an expert mathematician who can run Python code while reasoning.

Solve the problem step by step. When a calculation is long or easy to get wrong, write a short \
Python snippet between {TOOL_OPEN} and {TOOL_CLOSE}. The snippet is executed right away and its \
result is inserted after it as
```output
<what the snippet printed>
```
and you continue your reasoning from that output.

Rules for snippets:
- Available modules: {", ".join(AVAILABLE_MODULES)}. Import what you use. No files, no network.
- Keep each snippet short, one computation at a time, and print() the values you need.
- Variables persist from one snippet to the next within a solution.
- If a snippet fails, the error appears in the output block: fix the code and try again.
- Use code to compute and to check results, not instead of reasoning.

Give the final answer, simplified, in \\boxed{{}} at the end."""

BASELINE_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

MINI_INSTRUCTION = (
    f"Compute with Python between {TOOL_OPEN} and {TOOL_CLOSE}; its output follows in an ```output block. "
    "Put the final answer in \\boxed{}."
)

EXAMPLES_HEADER = "Solved examples (separated by lines `---`):"


@dataclass(frozen=True)
class PromptTemplate:
    """How one problem becomes chat messages.

    `user` is the user message with `{problem}` as the only placeholder (substituted literally,
    so LaTeX braces in problems need no escaping). Templates with `uses_examples` append the
    few-shot text to the system message; the others ignore it with a warning.
    """

    name: str
    system: str
    user: str = "{problem}"
    uses_examples: bool = False

    def system_message(self, examples: str = "") -> str:
        examples = examples.strip()
        if not examples:
            return self.system
        if not self.uses_examples:
            log.warning("Prompt template '%s' does not use few-shot examples; ignoring them.", self.name)
            return self.system
        return f"{self.system}\n\n{EXAMPLES_HEADER}\n\n{examples}"

    def messages(self, problem: str, examples: str = "") -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system_message(examples)},
            {"role": "user", "content": self.user.replace("{problem}", problem)},
        ]


PROMPTS: dict[str, PromptTemplate] = {
    "agent": PromptTemplate("agent", AGENT_INSTRUCTION, uses_examples=True),
    "baseline": PromptTemplate("baseline", BASELINE_INSTRUCTION),
    "mini": PromptTemplate("mini", MINI_INSTRUCTION),
}


def get_template(name: str) -> PromptTemplate:
    """The registered template `name`; an unknown name raises ConfigError listing the choices."""
    try:
        return PROMPTS[name]
    except KeyError:
        raise unknown_name_error("prompt template", str(name), list(PROMPTS)) from None


def resolve_examples_path(path: str | Path) -> Path:
    """Find an examples file: absolute, or relative to the cwd, the repo root, or this package.

    The repo-root and package fallbacks make the config default `deep_math/fewshot.txt` work
    from any working directory (Hydra may change it) and from an installed wheel.
    """
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p, PACKAGE_DIR / p]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Few-shot examples file '{path}' not found (tried: {tried}). Pass an existing file, "
        f"e.g. examples={DEFAULT_EXAMPLES}, or examples=null for no examples."
    )


def load_examples(path: str | Path | None) -> str:
    """The few-shot text of `path` (stripped); None or "" gives "" (no examples)."""
    if path is None or str(path) == "":
        return ""
    resolved = resolve_examples_path(path)
    text = resolved.read_text(encoding="utf-8").strip()
    log.debug("Loaded %d few-shot characters from %s", len(text), resolved)
    return text


def split_examples(text: str) -> list[str]:
    """The individual examples of a few-shot text (separated by a line holding only `---`)."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip() == EXAMPLE_SEPARATOR:
            blocks.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    blocks.append("\n".join(current).strip())
    return [b for b in blocks if b]


def build_messages(problem: str, template: str = "agent", examples: str = "") -> list[dict[str, str]]:
    """Chat messages `[system, user]` for one problem."""
    return get_template(template).messages(problem, examples)


# --- rendering with a tokenizer ---------------------------------------------------------------

_warned_no_chat_template = False


def render_chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Plain ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), the fallback without a chat template."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def _has_chat_template(tokenizer: Any) -> bool:
    if getattr(tokenizer, "chat_template", None):
        return True
    global _warned_no_chat_template
    if not _warned_no_chat_template:
        log.warning(
            "Tokenizer %s has no chat template; rendering prompts as plain ChatML instead.",
            getattr(tokenizer, "name_or_path", type(tokenizer).__name__) or type(tokenizer).__name__,
        )
        _warned_no_chat_template = True
    return False


def _as_id_list(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding unless return_dict=False; accept either, and a
    # batch of one (some tokenizers nest a single conversation).
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], list | tuple):
        if len(encoded) != 1:
            raise ValueError(f"expected the ids of one conversation, got a batch of {len(encoded)}")
        encoded = list(encoded[0])
    return [int(t) for t in encoded]


def build_prompt_text(tokenizer: Any, problem: str, template: str = "agent", examples: str = "") -> str:
    """The prompt as text, with the assistant turn opened."""
    messages = build_messages(problem, template, examples)
    if not _has_chat_template(tokenizer):
        return render_chatml(messages)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_prompt_ids(tokenizer: Any, problem: str, template: str = "agent", examples: str = "") -> list[int]:
    """The prompt's token ids exactly as the tokenizer's chat template produces them."""
    messages = build_messages(problem, template, examples)
    if not _has_chat_template(tokenizer):
        return _as_id_list(tokenizer.encode(render_chatml(messages), add_special_tokens=False))
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return _as_id_list(encoded)
