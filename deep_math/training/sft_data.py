"""Cold-start SFT traces for Mini-DeepMath, built by the agent loop itself.

A trace is the paper's inline format: one reasoning line, the snippet between `<tool_call>` and
`</tool_call>`, the sandbox's real ```output block, then the boxed answer:

    I multiply the two numbers with Python.
    <tool_call>
    print(397 * 8015)
    </tool_call>
    ```output
    3181955
    ```
    The answer is \\boxed{3181955}.<|im_end|>

It is not assembled by string concatenation: `MathAgent` runs with a `ScriptedEngine` that
"generates" the two model parts (the reasoning line + snippet, then the answer line written from
what the snippet printed), and the snippet runs in a real sandbox session. So the token ids, the
observation tokens and `env_mask` come from the same code path as a GRPO rollout
(`MathAgent._execute` / `_append`): the SFT loss masks exactly what GRPO masks. A trace whose
boxed answer does not grade correct against the generator's answer is dropped (and counted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deep_math.agent.config import TOOL_CLOSE, TOOL_OPEN, AgentConfig
from deep_math.agent.trace import Trace

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of tokens without loss (PyTorch's cross-entropy ignore_index)


@dataclass
class SFTExample:
    """One training sequence: prompt ids, then the trace's completion ids with its env_mask
    (1 = model token, trained on; 0 = observation token, not trained on)."""

    problem_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]
    text: str

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    @property
    def labels(self) -> list[int]:
        """-100 on the prompt and on observation tokens; the token id on the model's own tokens."""
        completion = [
            t if m else IGNORE_INDEX for t, m in zip(self.completion_ids, self.env_mask, strict=True)
        ]
        return [IGNORE_INDEX] * len(self.prompt_ids) + completion


def first_reply(intro: str, code: str) -> str:
    return f"{intro}\n{TOOL_OPEN}\n{code}\n{TOOL_CLOSE}"


def answer_reply(output: str) -> str:
    """The model's last line, written from what the snippet printed."""
    return f"The answer is \\boxed{{{output.strip()}}}."


def scripted_trace(prompt_ids: list[int], intro: str, code: str, tokenizer: Any, session: Any,
                   agent: AgentConfig) -> Trace:  # fmt: skip
    """Run the agent loop on `prompt_ids` with a scripted model: reasoning line + snippet, then
    the answer line from the real sandbox output (EOS after it)."""
    from deep_math.agent.math_agent import MathAgent
    from deep_math.agent.model import EngineModel
    from deep_math.engines.base import SamplingParams
    from deep_math.engines.scripted import ScriptedEngine, ScriptedReply

    holder: dict[str, Any] = {}

    def script(request: Any, index: int) -> ScriptedReply:
        if index == 0:
            return ScriptedReply(first_reply(intro, code))
        result = holder["agent"].python_executor.last_result
        return ScriptedReply(answer_reply(result.output if result is not None else ""), eos=True)

    engine = ScriptedEngine(tokenizer, script)
    model = EngineModel(engine, SamplingParams(temperature=0.0, max_tokens=agent.max_agent_output))
    holder["agent"] = MathAgent(model, session, agent)
    return holder["agent"].solve(prompt_ids)


def build_sft_examples(
    problems: Iterable[Any],
    tokenizer: Any,
    template: str = "mini",
    agent: AgentConfig | None = None,
    sandbox: Any = None,
) -> tuple[list[SFTExample], int]:
    """(examples, number dropped) for Mini-DeepMath problems (`Problem` records whose `extra`
    holds `code` and `intro`, as `load_problems("mini:train")` returns them).

    A trace is dropped when the snippet failed or its boxed answer is not graded correct."""
    from deep_math.evaluation.extract import extract_answer
    from deep_math.evaluation.grading import is_correct
    from deep_math.prompts import build_prompt_ids

    agent = agent or AgentConfig(max_steps=1, max_agent_output=512, sandbox_timeout=10.0)
    own_sandbox = sandbox is None
    if own_sandbox:
        from deep_math.sandbox import Sandbox

        sandbox = Sandbox(
            timeout=agent.sandbox_timeout,
            memory_mb=agent.sandbox_memory_mb,
            max_output_chars=agent.max_output_chars,
            allow_degraded_network=agent.allow_degraded_network,
        )
    examples, dropped = [], 0
    try:
        for p in problems:
            if "code" not in p.extra or "intro" not in p.extra:
                raise ValueError(f"problem {p.id} has no 'code'/'intro' (not a Mini-DeepMath problem?)")
            prompt_ids = build_prompt_ids(tokenizer, p.problem, template=template)
            session = sandbox.session()
            try:
                trace = scripted_trace(
                    prompt_ids, p.extra["intro"], p.extra["code"], tokenizer, session, agent
                )
            finally:
                session.close()
            ok = (
                trace.finish_reason == "answer"
                and trace.used_tool_successfully
                and is_correct(extract_answer(trace.text), p.answer)
            )
            if not ok:
                dropped += 1
                log.warning("Dropped SFT trace for %s (%s): %r", p.id, trace.finish_reason, trace.text[-120:])
                continue
            examples.append(
                SFTExample(p.id, list(trace.prompt_ids), trace.completion_ids, trace.env_mask, trace.text)
            )
    finally:
        if own_sandbox:
            sandbox.close()
    return examples, dropped


def to_dataset(examples: list[SFTExample]) -> Any:
    """A `datasets.Dataset` with `input_ids` and `labels` (TRL's SFTTrainer uses such labels as is)."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
