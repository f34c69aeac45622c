"""Run many traces concurrently against one engine and one sandbox.

Every (problem, sample) pair is a trace; up to `max_concurrency` traces are in flight at once,
each in its own thread. Engine calls from all threads are batched by the engine (micro-batching
in the transformers engine, continuous batching in vLLM), and a snippet running in one trace's
sandbox worker overlaps generation for the others, because both the engine wait and the sandbox
wait release the GIL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace

from deep_math.agent.config import AgentConfig
from deep_math.agent.math_agent import MathAgent, has_answer
from deep_math.agent.model import EngineModel
from deep_math.agent.trace import Trace
from deep_math.engines.base import Engine, GenRequest, SamplingParams
from deep_math.seeds import derive_seed

log = logging.getLogger(__name__)


class AgentRunner:
    """Runs traces with the DeepMath agent (use_agent=True) or as plain generation (baseline).

    The runner owns a `Sandbox` it creates itself (unless one is passed in) and closes it in
    `close()`. `run` returns traces in the order of the prompts and never raises for a single
    trace's failure: that trace has finish_reason "error".

    Budget: both modes get the same total, `config.max_agent_output` generated tokens per trace.
    max_new_tokens caps one generation call of the agent (a call that reaches it is continued in
    the same turn, see `MathAgent`); the baseline is one generation of the whole budget.
    """

    def __init__(
        self,
        engine: Engine,
        config: AgentConfig | None = None,
        sandbox=None,
        use_agent: bool = True,
        max_new_tokens: int | None = None,
    ):
        self.engine = engine
        self.config = config or AgentConfig()
        self.use_agent = use_agent
        self.max_new_tokens = max_new_tokens
        self._own_sandbox = sandbox is None and use_agent
        if self._own_sandbox:
            from deep_math.sandbox import Sandbox

            sandbox = Sandbox(
                timeout=self.config.sandbox_timeout,
                memory_mb=self.config.sandbox_memory_mb,
                max_output_chars=self.config.max_output_chars,
                allow_degraded_network=self.config.allow_degraded_network,
            )
        self.sandbox = sandbox

    # --- one trace --------------------------------------------------------------------------
    def run_one(self, prompt_ids: list[int], sampling: SamplingParams, lora_path: str | None = None) -> Trace:
        if not self.use_agent:
            return self._run_plain(prompt_ids, sampling, lora_path)
        seed = None if sampling.seed is None else derive_seed(sampling.seed, "sandbox")
        try:
            session = self.sandbox.session(seed=seed)
        except Exception as exc:  # noqa: BLE001 - a sandbox failure ends this trace only
            return Trace(prompt_ids=list(prompt_ids), finish_reason="error", error=f"sandbox: {exc}")
        try:
            model = EngineModel(self.engine, sampling, lora_path)
            agent = MathAgent(model, session, self.config, max_new_tokens=self.max_new_tokens)
            return agent.solve(prompt_ids)
        finally:
            session.close()

    def _run_plain(self, prompt_ids: list[int], sampling: SamplingParams, lora_path: str | None) -> Trace:
        trace = Trace(prompt_ids=list(prompt_ids))
        params = replace(sampling, max_tokens=self.config.max_agent_output, stop=[])
        try:
            (result,) = self.engine.generate([GenRequest(list(prompt_ids), params, lora_path)])
        except Exception as exc:  # noqa: BLE001 - an engine failure ends this trace only
            trace.finish_reason, trace.error = "error", f"{type(exc).__name__}: {exc}"
            return trace
        trace.completion_ids = list(result.token_ids)
        trace.logprobs = list(result.logprobs)
        trace.env_mask = [1] * len(result.token_ids)
        trace.model_tokens = len(result.token_ids)
        trace.steps = 1
        trace.text = result.text
        trace.tool_output_spans = []  # plain generation: no tool output anywhere in the text
        if result.finish_reason == "length" and len(result.token_ids) >= params.max_tokens:
            trace.finish_reason = "budget"  # truncated, even after a drafted box
        elif has_answer(result.text):
            trace.finish_reason = "answer"
        else:
            trace.finish_reason = "budget" if result.finish_reason == "length" else "eos"
        return trace

    # --- many traces ------------------------------------------------------------------------
    def run(
        self,
        prompt_ids: Sequence[list[int]],
        sampling: SamplingParams | Sequence[SamplingParams],
        lora_path: str | None = None,
        on_trace: Callable[[int, Trace], None] | None = None,
    ) -> list[Trace]:
        """Run one trace per prompt, all concurrently (bounded by max_concurrency).

        sampling: one SamplingParams for all, or one per prompt (e.g. per-sample seeds).
        on_trace(index, trace) is called as each trace finishes (from a worker thread, serialized).
        """
        n = len(prompt_ids)
        params = [sampling] * n if isinstance(sampling, SamplingParams) else list(sampling)
        if len(params) != n:
            raise ValueError(f"got {n} prompts but {len(params)} sampling params")
        traces: list[Trace | None] = [None] * n
        lock = threading.Lock()
        workers = max(1, min(self.config.max_concurrency, n))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trace") as pool:
            futures = {pool.submit(self.run_one, prompt_ids[i], params[i], lora_path): i for i in range(n)}
            for fut in as_completed(futures):
                i = futures[fut]
                traces[i] = fut.result()
                if on_trace is not None:
                    with lock:
                        on_trace(i, traces[i])
        return traces  # type: ignore[return-value]

    def close(self) -> None:
        if self._own_sandbox and self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def __enter__(self) -> AgentRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
