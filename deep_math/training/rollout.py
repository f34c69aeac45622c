"""TRL `rollout_func`: each GRPO completion is one full agent trace.

`AgentRollout(source, tokenizer, settings)` is passed as `GRPOTrainer(rollout_func=...)`. TRL calls
it with this process's slice of prompts, already repeated `num_generations` times by its sampler
(the copies of one prompt may sit on different ranks), and the trainer. It returns, one entry per
prompt, in order:

- `prompt_ids`: the chat-templated prompt (system instruction + few-shot examples + problem);
- `completion_ids`: model tokens and observation (tool output) tokens, exactly as in the trace,
  truncated to `max_completion_length` (TRL does not truncate what a rollout returns);
- `logprobs`: the engine's logprob on model tokens, 0.0 on observation tokens (one per token, as
  importance-sampling correction needs);
- `env_mask`: 1 on model tokens, 0 on observation tokens (TRL multiplies it into the loss mask, so
  observation tokens get no loss). A failed trace (finish_reason "error") is masked entirely;
- per-trace columns that reach the reward functions: `tool_calls`, `tool_errors`,
  `tool_timeouts`, `sandbox_errors`, `model_tokens`, `tool_tokens`, `steps`, `finish_reason`, `trace_error`
  (None, or the error message: the rewards then return None, so the trace gets advantage 0),
  `trace_text` and `tool_output_spans` (the trace's text and where the agent inserted tool output
  in it, so the accuracy reward never reads tool output as the model's answer; None for a
  completion cut to `max_completion_length` or a trace without known spans, whose reward parses
  the completion itself).

The sampling temperature is read from `trainer.temperature` at every call, which the temperature
schedule updates (`deep_math/training/trainer.py`).

Where traces come from is a `TraceSource`: `PolicyTraceSource` runs the agent locally with the
trainer's own (peft) model behind a transformers engine (the current policy, no weight copy);
`ServerTraceSource` asks a `deep_math.vllm_serve_agent` server and pushes the policy weights to it
once per optimizer step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from deep_math.agent.trace import Trace
from deep_math.engines.base import SamplingParams
from deep_math.records import STAT_FIELDS, used_tool_successfully
from deep_math.seeds import derive_seed

log = logging.getLogger(__name__)

STAT_COLUMNS = STAT_FIELDS  # one column per TraceStats counter


@dataclass
class RolloutSettings:
    """top_p/top_k: sampling (the temperature comes from the trainer). max_completion_length: hard
    cap on completion tokens (model + observation). template/examples: prompt rendering
    (`deep_math.prompts`). seed: base of the per-trace seeds (None: unseeded sampling)."""

    max_completion_length: int = 512
    top_p: float = 1.0
    top_k: int = 0
    template: str = "agent"
    examples: str = ""
    seed: int | None = None


class TraceSource(Protocol):
    """Produces one trace per prompt, in order; a failing trace has finish_reason "error"."""

    def generate(
        self, prompt_ids: list[list[int]], sampling: list[SamplingParams], trainer: Any
    ) -> list[Trace]: ...

    def close(self) -> None: ...


def traces_to_rollout(
    traces: Sequence[Trace], max_completion_length: int, pad_token_id: int
) -> dict[str, list]:
    """The rollout_func output for `traces` (see the module docstring).

    A completion longer than `max_completion_length` is cut (its finish_reason becomes "budget").
    An empty completion becomes one `pad_token_id` token with env_mask 0 and logprob 0.0: TRL needs
    at least one token per completion, and that token is never trained on."""
    out: dict[str, list] = {
        "prompt_ids": [],
        "completion_ids": [],
        "logprobs": [],
        "env_mask": [],
        "finish_reason": [],
        "trace_error": [],
        "trace_text": [],
        "tool_output_spans": [],
    }
    for name in STAT_COLUMNS:
        out[name] = []
    for trace in traces:
        n = len(trace.completion_ids)
        if len(trace.logprobs) != n or len(trace.env_mask) != n:
            raise ValueError(
                f"trace has {n} completion ids, {len(trace.logprobs)} logprobs and {len(trace.env_mask)} "
                "env_mask entries; they must be aligned"
            )
        ids = list(trace.completion_ids[:max_completion_length])
        logprobs = [float(x) for x in trace.logprobs[:max_completion_length]]
        mask = [int(x) for x in trace.env_mask[:max_completion_length]]
        finish = trace.finish_reason
        if n > max_completion_length and finish != "error":
            finish = "budget"
        if finish == "error":
            mask = [0] * len(ids)
        if not ids:
            ids, logprobs, mask = [pad_token_id], [0.0], [0]
        out["prompt_ids"].append(list(trace.prompt_ids))
        out["completion_ids"].append(ids)
        out["logprobs"].append(logprobs)
        out["env_mask"].append(mask)
        out["finish_reason"].append(finish)
        out["trace_error"].append(trace.error if finish == "error" else None)
        located = n <= max_completion_length and trace.tool_output_spans is not None
        out["trace_text"].append(trace.text if located else None)
        out["tool_output_spans"].append([list(span) for span in trace.tool_output_spans] if located else None)
        for name in STAT_COLUMNS:
            out[name].append(int(getattr(trace, name)))
    return out


class AgentRollout:
    """The `rollout_func` (see the module docstring). Call `close()` when training ends."""

    def __init__(self, source: TraceSource, tokenizer: Any, settings: RolloutSettings):
        self.source = source
        self.tokenizer = tokenizer
        self.settings = settings
        self._prompt_cache: dict[str, list[int]] = {}
        self.last_traces: list[Trace] = []

    def prompt_ids(self, prompt: Any) -> list[int]:
        """Token ids of one dataset prompt (the problem text), cached."""
        from deep_math.prompts import build_prompt_ids

        if not isinstance(prompt, str):
            raise TypeError(f"AgentRollout expects problem texts as prompts, got {type(prompt).__name__}")
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = build_prompt_ids(
                self.tokenizer, prompt, template=self.settings.template, examples=self.settings.examples
            )
        return self._prompt_cache[prompt]

    def sampling(self, trainer: Any, n: int) -> list[SamplingParams]:
        s = self.settings
        temperature = float(trainer.temperature)
        seeds: list[int | None] = [None] * n
        if s.seed is not None:
            step = int(getattr(getattr(trainer, "state", None), "global_step", 0) or 0)
            rank = int(getattr(getattr(trainer, "accelerator", None), "process_index", 0) or 0)
            seeds = [derive_seed(s.seed, "rollout", step, rank, i) for i in range(n)]
        return [
            SamplingParams(
                temperature=temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                max_tokens=s.max_completion_length,
                seed=seed,
            )
            for seed in seeds
        ]

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        prompt_ids = [self.prompt_ids(p) for p in prompts]
        traces = self.source.generate(prompt_ids, self.sampling(trainer, len(prompts)), trainer)
        if len(traces) != len(prompts):
            raise RuntimeError(f"trace source returned {len(traces)} traces for {len(prompts)} prompts")
        self.last_traces = traces
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        out = traces_to_rollout(traces, self.settings.max_completion_length, pad)
        _log_rollout_metrics(trainer, out)
        return out

    def close(self) -> None:
        self.source.close()


def _log_rollout_metrics(trainer: Any, out: dict[str, list]) -> None:
    log_metric = getattr(trainer, "_log_metric", None)
    n = len(out["completion_ids"])
    if log_metric is None or n == 0:
        return
    errors = sum(e is not None for e in out["trace_error"])
    if errors:
        log.warning("%d of %d traces failed (masked out, advantage 0): %s", errors, n, out["trace_error"][0])
    used = sum(
        used_tool_successfully(c, e, t, s)
        for c, e, t, s in zip(
            out["tool_calls"], out["tool_errors"], out["tool_timeouts"], out["sandbox_errors"], strict=True
        )
    )
    log_metric("agent/trace_errors", errors / n)
    log_metric("agent/used_tool", used / n)
    log_metric("agent/tool_calls", sum(out["tool_calls"]) / n)
    log_metric("agent/tool_tokens", sum(out["tool_tokens"]) / n)
    log_metric("agent/budget", sum(f == "budget" for f in out["finish_reason"]) / n)
    log_metric("agent/answered", sum(f == "answer" for f in out["finish_reason"]) / n)
