"""Reward functions for GRPO, configured by name as `{name: weight}`.

Each reward is a plain TRL reward function `(completions, answer, **kwargs) -> list[float | None]`:
one value per completion, `None` where the completion cannot be scored. TRL turns `None` into NaN;
a completion for which every reward is None gets advantage 0 (no learning signal), which is how
failed rollouts (`trace_error` set by the rollout) are kept out of training instead of being
scored as wrong answers.

- `accuracy`: 1.0 when the answer extracted from the completion (the evaluation extractor, which
  ignores `<tool_call>` code and `output` blocks) is equivalent to the gold answer under
  math-verify, else 0.0. With the rollout's `trace_text` / `tool_output_spans` columns it reads
  the trace's text with tool output located where the agent inserted it.
- `code_use`: 1.0 when the trace executed at least one snippet successfully (no error, no
  timeout, no sandbox failure), else 0.0. Reads the `tool_calls` / `tool_errors` /
  `tool_timeouts` / `sandbox_errors` columns that the rollout adds; without them (a plain
  generation) it is 0.0.
- `code_use_gated`: 1.0 when the trace ran a snippet successfully and its answer is correct, else
  0.0 (the Mini-DeepMath variant: code use never pays for a wrong answer).
- `brevity`: for a correct answer, `1 - model_tokens / BREVITY_SCALE` (floored at 0), else 0.0: the
  paper's 5k cap made explicit for traces far below any cap. Only the model's own tokens count (tool
  output is the sandbox's), and a wrong answer never earns it, so brevity cannot outrank
  correctness. GRPO normalises rewards within a group, so in a group of correct traces the
  advantage follows the length alone whatever the scale or weight.

The paper's weights are accuracy 0.1, code_use 1.0 (`DEFAULT_REWARD_WEIGHTS`).

A name with a dot is an import path `package.module.function` (as in TRL's GRPO script), for a
reward of your own without editing this module, e.g. `++rewards={my_rewards.short_text:0.5}` on the
command line (`++` because Hydra would read the dots of `+rewards.my_rewards.short_text` as nesting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deep_math.config_utils import ConfigError, unknown_name_error
from deep_math.records import used_tool_successfully

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float | None]]

DEFAULT_REWARD_WEIGHTS: dict[str, float] = {"accuracy": 0.1, "code_use": 1.0}


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form `[{"role", "content"}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return "".join(str(m.get("content") or "") for m in completion)
    return str(completion)


def _failed(kwargs: Mapping[str, Any], n: int) -> list[bool]:
    errors = kwargs.get("trace_error")
    if errors is None:
        return [False] * n
    return [bool(e) for e in errors]


def _gold(answer: Sequence[Any] | None, solution: Sequence[Any] | None, n: int) -> list[str]:
    golds = answer if answer is not None else solution
    if golds is None:
        raise ValueError("accuracy reward needs a gold answer column ('answer' or 'solution')")
    if len(golds) != n:
        raise ValueError(f"accuracy reward got {n} completions but {len(golds)} gold answers")
    return [str(g) for g in golds]


def accuracy(
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    solution: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the completion's extracted answer matches the gold answer, else 0.0 (None: failed trace)."""
    from deep_math.evaluation.extract import extract_answer
    from deep_math.evaluation.grading import is_correct

    n = len(completions)
    golds = _gold(answer, solution, n)
    failed = _failed(kwargs, n)
    texts = kwargs.get("trace_text") or [None] * n
    spans = kwargs.get("tool_output_spans") or [None] * n
    rewards: list[float | None] = []
    for completion, gold, bad, text, where in zip(completions, golds, failed, texts, spans, strict=True):
        if bad:
            rewards.append(None)
            continue
        if text is not None and where is not None:
            prediction = extract_answer(text, [tuple(span) for span in where])
        else:
            prediction = extract_answer(completion_text(completion))
        rewards.append(1.0 if is_correct(prediction, gold) else 0.0)
    return rewards


def code_use(
    completions: Sequence[Any],
    tool_calls: Sequence[int] | None = None,
    tool_errors: Sequence[int] | None = None,
    tool_timeouts: Sequence[int] | None = None,
    sandbox_errors: Sequence[int] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the trace ran at least one snippet without error, timeout or sandbox failure, else 0.0
    (None: failed trace)."""
    n = len(completions)
    failed = _failed(kwargs, n)
    if tool_calls is None:
        return [None if bad else 0.0 for bad in failed]
    errors = tool_errors if tool_errors is not None else [0] * n
    timeouts = tool_timeouts if tool_timeouts is not None else [0] * n
    broken = sandbox_errors if sandbox_errors is not None else [0] * n
    rewards: list[float | None] = []
    for calls, errs, touts, sb, bad in zip(tool_calls, errors, timeouts, broken, failed, strict=True):
        if bad:
            rewards.append(None)
        else:
            rewards.append(1.0 if used_tool_successfully(calls, errs, touts, sb) else 0.0)
    return rewards


def code_use_gated(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 only if the trace ran a snippet successfully AND its answer is correct (None: failed trace).

    With the paper's weights (accuracy 0.1, code_use 1.0) a wrong answer with code (1.0) outranks a
    right answer without code (0.1); in a group where every trace runs code, code_use is constant
    and the advantage comes from accuracy alone, but between code and no code the tool dominates.
    Gating code use on correctness keeps the push toward the tool (a correct answer with code earns
    more than one without) while never paying for code that did not lead to the right answer."""
    used = code_use(completions, **kwargs)
    right = accuracy(completions, **kwargs)
    return [None if u is None or r is None else u * r for u, r in zip(used, right, strict=True)]


BREVITY_SCALE = 256
"""Model tokens at which `brevity` reaches 0 (the mini recipe's traces are ~55 model tokens)."""


def brevity(
    completions: Sequence[Any], model_tokens: Sequence[int] | None = None, **kwargs: Any
) -> list[float | None]:
    """1 - model_tokens / BREVITY_SCALE (at least 0) for a correct answer, else 0.0 (None: failed
    trace). Needs the rollout's `model_tokens` column: a plain generation has none, and this reward
    then raises instead of silently scoring every completion as long."""
    if model_tokens is None:
        raise ValueError(
            "the brevity reward needs the rollout's 'model_tokens' column; it is set by the agentic "
            "rollout (deep_math.training.rollout), so train with the agent or drop 'brevity' from rewards"
        )
    right = accuracy(completions, **kwargs)
    return [
        None if r is None else r * max(0.0, 1.0 - int(n) / BREVITY_SCALE)
        for r, n in zip(right, model_tokens, strict=True)
    ]


REWARDS: dict[str, RewardFunc] = {
    "accuracy": accuracy,
    "code_use": code_use,
    "code_use_gated": code_use_gated,
    "brevity": brevity,
}


def get_reward(name: str) -> RewardFunc:
    """The reward function registered as `name`, or imported from a dotted path `module.function`;
    unknown names raise ConfigError listing the known ones."""
    if name in REWARDS:
        return REWARDS[name]
    if "." not in str(name):
        raise unknown_name_error("reward", str(name), list(REWARDS))
    return _import_reward(str(name))


def _import_reward(path: str) -> RewardFunc:
    import importlib

    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"reward '{path}': cannot import module '{module_name}' ({exc}). A dotted reward name is "
            f"an import path module.function: make the module importable (install it, or run from the "
            f"folder that holds it), or use a built-in reward: {sorted(REWARDS)}"
        ) from None
    func = getattr(module, attr, None)
    if not callable(func):
        found = "not callable" if func is not None else "not defined"
        raise ConfigError(
            f"reward '{path}': '{attr}' is {found} in module '{module_name}' ({module.__file__}); "
            "it must be a function (completions, **columns) -> list[float | None]"
        )
    return func


def build_rewards(weights: Mapping[str, float] | None = None) -> tuple[list[RewardFunc], list[float]]:
    """(reward functions, weights) in the mapping's order, for `GRPOTrainer(reward_funcs=...)` and
    `GRPOConfig(reward_weights=...)`. None -> the paper's `DEFAULT_REWARD_WEIGHTS`."""
    weights = dict(DEFAULT_REWARD_WEIGHTS if weights is None else weights)
    if not weights:
        raise ConfigError(
            f"rewards is empty; set at least one of {sorted(REWARDS)}, e.g. {DEFAULT_REWARD_WEIGHTS}"
        )
    funcs, values = [], []
    for name, weight in weights.items():
        funcs.append(get_reward(name))
        try:
            values.append(float(weight))
        except (TypeError, ValueError):
            raise ConfigError(f"reward weight for '{name}' must be a number, got {weight!r}") from None
    return funcs, values
