"""Traces/s of the concurrent agent runner vs one trace at a time, on the embedded model.

    python bench/agent_throughput.py [--traces 16] [--max-agent-output 160]

Both modes run the same 16 traces (bundled problems, agent on, the transformers engine on CPU,
fixed per-trace seeds) in one process, side by side. "One at a time" is the original DeepMath
design: each trace's generate/execute loop runs to completion before the next starts.
Also printed: the share of wall time in which neither the engine nor the sandbox was busy
(time spent in the runner itself: prompt building, smolagents bookkeeping, tokenizing
observations, thread hand-offs).
"""

from __future__ import annotations

import argparse
import time

from busy_clock import BusyClock  # bench/ is sys.path[0] when run as a script

from deep_math.agent.config import AgentConfig
from deep_math.agent.runner import AgentRunner
from deep_math.data import load_problems
from deep_math.engines import build_engine
from deep_math.engines.base import SamplingParams
from deep_math.prompts import build_prompt_ids, load_examples
from deep_math.sandbox import Sandbox


class TimedEngine:
    def __init__(self, inner, clock):
        self.inner, self.clock = inner, clock
        self.name, self.tokenizer = inner.name, inner.tokenizer
        self.tokens = 0

    def generate(self, requests):
        self.clock.enter()
        try:
            out = self.inner.generate(requests)
        finally:
            self.clock.exit()
        self.tokens += sum(len(r.token_ids) for r in out)
        return out

    def close(self):
        pass


class TimedSandbox:
    def __init__(self, inner, clock):
        self.inner, self.clock = inner, clock

    def session(self, seed: int | None = None):
        real = self.inner.session(seed=seed)
        clock = self.clock

        class Session:
            def run(self, code):
                clock.enter()
                try:
                    return real.run(code)
                finally:
                    clock.exit()

            def close(self):
                real.close()

        return Session()


def run_mode(engine, sandbox, prompts, params, concurrency, max_agent_output):
    clock = BusyClock()
    timed = TimedEngine(engine, clock)
    batches_before = len(engine.stats.batch_sizes)
    cfg = AgentConfig(max_steps=4, max_agent_output=max_agent_output, max_concurrency=concurrency)
    runner = AgentRunner(timed, cfg, sandbox=TimedSandbox(sandbox, clock))
    start = time.perf_counter()
    traces = runner.run(prompts, params)
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "traces_s": len(traces) / wall,
        "tokens_s": timed.tokens / wall,
        "tool_calls": sum(t.tool_calls for t in traces),
        "completion_tokens": sum(len(t.completion_ids) for t in traces),
        "outside": 1 - clock.busy / wall,
        "errors": sum(t.finish_reason == "error" for t in traces),
        "batch_sizes": engine.stats.batch_sizes[batches_before:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=16)
    ap.add_argument("--max-agent-output", type=int, default=160)
    ap.add_argument(
        "--chunk-tokens", type=int, default=None, help="engine chunk size (default: the engine's)"
    )
    args = ap.parse_args()

    extra = {} if args.chunk_tokens is None else {"chunk_tokens": args.chunk_tokens}
    engine = build_engine("transformers", device="cpu", **extra)
    examples = load_examples("deep_math/fewshot.txt")
    problems = load_problems(None, limit=args.traces)
    prompts = [
        build_prompt_ids(engine.tokenizer, problems[i % len(problems)].problem, "agent", examples)
        for i in range(args.traces)
    ]
    params = [
        SamplingParams(temperature=0.7, top_p=0.95, max_tokens=args.max_agent_output, seed=1000 + i)
        for i in range(args.traces)
    ]
    print(
        f"{args.traces} traces, prompt ~{len(prompts[0])} tokens, max_agent_output={args.max_agent_output}, "
        "embedded SmolLM2-135M on CPU"
    )
    with Sandbox(timeout=10.0) as sandbox:
        run_mode(engine, sandbox, prompts[:2], params[:2], 2, 16)  # warm-up: model, kernels, fork server
        one = run_mode(engine, sandbox, prompts, params, 1, args.max_agent_output)
        many = run_mode(engine, sandbox, prompts, params, args.traces, args.max_agent_output)
    engine.close()

    print(
        f"{'mode':<22}{'wall s':>9}{'traces/s':>10}{'tokens/s':>10}{'tokens':>8}{'tool calls':>11}"
        f"{'outside engine+sandbox':>24}"
    )
    for name, r in (("one trace at a time", one), ("concurrent runner", many)):
        print(
            f"{name:<22}{r['wall']:>9.1f}{r['traces_s']:>10.3f}{r['tokens_s']:>10.1f}"
            f"{r['completion_tokens']:>8}{r['tool_calls']:>11}{r['outside']:>23.1%}"
        )
    sizes = many["batch_sizes"]
    print(
        f"concurrent runner: {len(sizes)} engine batches, sizes incl. requests that joined mid-batch: {sizes}"
    )
    print(
        f"speedup (traces/s, concurrent / one at a time): {many['traces_s'] / one['traces_s']:.2f}x (target >= 3x)"
    )
    print(f"wall time outside engine and sandbox, concurrent runner: {many['outside']:.1%} (target < 5%)")


if __name__ == "__main__":
    main()
