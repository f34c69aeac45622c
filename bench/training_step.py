"""Where the time of one CPU GRPO step goes, and what the batched agent runner buys.

    python bench/training_step.py                     # embedded SmolLM2, default training config
    python bench/training_step.py --traces 8 --max-agent-output 128 --examples deep_math/fewshot.txt
    python bench/training_step.py --skip-speedup --set train.gradient_checkpointing=true   # any override
    python bench/training_step.py --compare train.gradient_checkpointing=true --examples deep_math/fewshot.txt
    python bench/training_step.py --mini outputs/mini/sft --skip-speedup   # a mini_grpo step

Part 1 runs one GRPO step of the default config (`configs/training.yaml`: LoRA, 4 traces of the
agent with local policy rollouts) and splits its wall time into
- rollout generation: time inside the transformers engine's `generate` batches,
- sandbox: wall time of the rollout during which at least one snippet was running,
- rollout other: the rest of the rollout (agent loop, tokenizing observations, waits),
- rewards: the reward functions,
- policy update: everything else in the step (logprobs, loss, backward, optimizer).
Part 2 runs the same seeded traces with the agent runner batched (all in flight, engine
micro-batching) and one at a time, and prints both side by side.
`--compare KEY=VALUE` instead runs the step twice, each in a fresh process (peak memory is per
process) with the same seeded rollouts, without and with the override, and prints both side by
side with their ratio.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

from busy_clock import BusyClock  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parents[1]


class TimedSandbox:
    """Wraps a Sandbox; records the wall-clock intervals during which any snippet ran."""

    def __init__(self, inner):
        self.inner = inner
        self.clock = BusyClock()

    @property
    def busy(self) -> float:
        return self.clock.busy

    @property
    def snippets(self) -> int:
        return self.clock.entries

    def session(self, seed: int | None = None):
        session = self.inner.session(seed)
        run = session.run

        def timed_run(*args, **kwargs):
            self.clock.enter()
            try:
                return run(*args, **kwargs)
            finally:
                self.clock.exit()

        session.run = timed_run
        return session

    def close(self):
        self.inner.close()


def timed(func, bucket: dict, key: str):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            bucket[key] = bucket.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def one_grpo_step(args) -> dict:
    from hydra import compose, initialize_config_dir

    from deep_math.sandbox import Sandbox
    from deep_math.training import builders
    from deep_math.training.config import load_training_config
    from deep_math.training.sources import PolicyTraceSource

    overrides = [
        "train.max_steps=1",
        "train.output_dir=/tmp/deep_math_bench_training_step",
        "train.save_steps=1000",
        f"agent.max_agent_output={args.max_agent_output}",
        f"train.max_completion_length={args.max_agent_output}",
        f"prompt.examples={args.examples or 'null'}",
        *args.set,
    ]
    if args.mini:  # the mini_grpo step: its config, continuing the SFT adapter
        from deep_math.training.mini_grpo import load_mini_grpo_config, load_start_policy

        overrides += [f"init_adapter={args.mini}", "dev_eval=null"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        if args.mini:
            cfg = load_mini_grpo_config(compose(config_name="mini_grpo", overrides=overrides))
        else:
            cfg = load_training_config(compose(config_name="training", overrides=overrides))
    times: dict[str, float] = {}
    a = cfg.agent
    sandbox = TimedSandbox(
        Sandbox(timeout=a.sandbox_timeout, memory_mb=a.sandbox_memory_mb, max_output_chars=a.max_output_chars)
    )
    if args.mini:
        model, tokenizer, cfg = load_start_policy(cfg)
    else:
        model, tokenizer = builders.load_policy(cfg)
    source = PolicyTraceSource(cfg.agent, tokenizer, sandbox=sandbox)
    train, _ = builders.load_train_problems(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = builders.build_trainer(cfg, train, model=model, tokenizer=tokenizer, source=source)
    rollout = trainer.deep_math_rollout
    rollout.source.generate = timed(rollout.source.generate, times, "rollout")
    trainer.reward_funcs = [timed(f, times, "rewards") for f in trainer.reward_funcs]
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        total = time.perf_counter() - start
        engine_seconds = source.engine.stats.busy_seconds if source.engine else 0.0
        tokens = sum(len(t.completion_ids) for t in rollout.last_traces)
        rollout.close()
        sandbox.close()
    rollout_s, rewards_s = times.get("rollout", 0.0), times.get("rewards", 0.0)
    return {
        "total": total,
        "rollout": rollout_s,
        "generation": engine_seconds,
        "sandbox": sandbox.busy,
        "snippets": sandbox.snippets,
        "rewards": rewards_s,
        "update": total - rollout_s - rewards_s,  # everything else in the step
        "traces": len(rollout.last_traces),
        "tokens": tokens,
    }


def runner_speedup(args) -> dict:
    from deep_math.agent.config import AgentConfig
    from deep_math.agent.runner import AgentRunner
    from deep_math.data import load_problems
    from deep_math.engines.base import SamplingParams
    from deep_math.engines.transformers import TransformersEngine
    from deep_math.prompts import build_prompt_ids, load_examples
    from deep_math.sandbox import Sandbox

    engine = TransformersEngine(device="cpu")
    examples = load_examples(args.examples)
    problems = load_problems(None, limit=max(1, args.traces // 4))
    prompts = [
        build_prompt_ids(engine.tokenizer, p.problem, "agent", examples) for p in problems for _ in range(4)
    ]
    prompts = prompts[: args.traces]
    sampling = [
        SamplingParams(temperature=1.0, top_p=0.8, top_k=50, max_tokens=args.max_agent_output, seed=1000 + i)
        for i in range(len(prompts))
    ]
    results = {}
    with Sandbox(timeout=10.0, memory_mb=1024, max_output_chars=1000) as sandbox:
        for label, concurrency in (("batched", len(prompts)), ("one at a time", 1)):
            cfg = AgentConfig(
                max_steps=3, max_agent_output=args.max_agent_output, max_concurrency=concurrency
            )
            runner = AgentRunner(engine, cfg, sandbox=sandbox)
            start = time.perf_counter()
            traces = runner.run(prompts, sampling)
            wall = time.perf_counter() - start
            tokens = sum(len(t.completion_ids) for t in traces)
            results[label] = {"wall": wall, "tokens": tokens, "tool_calls": sum(t.tool_calls for t in traces)}
    engine.close()
    return results


def compare(args) -> None:
    """The step without and with `args.compare`, each in its own process, same seeded rollouts."""
    base = [sys.executable, __file__, "--skip-speedup", "--child-json", "-", "--max-agent-output",
            str(args.max_agent_output), *(["--examples", args.examples] if args.examples else []),
            "--set", f"rollout.seed={args.seed}", *(["--mini", args.mini] if args.mini else [])]  # fmt: skip
    for override in args.set:
        base += ["--set", override]
    results = {}
    for label, extra in (("baseline", []), ("variant", [x for o in args.compare for x in ("--set", o)])):
        print(f"running the {label} step in a fresh process ...", flush=True)
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {label} step failed:\n{proc.stderr[-3000:]}")
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    b, v = results["baseline"], results["variant"]
    print(f"\nOne GRPO step, same seeded rollouts; variant: {' '.join(args.compare)}")
    print(f"  {'':<22}{'baseline':>12}{'variant':>12}{'variant/baseline':>18}")
    for key, name, unit in (
        ("tokens", "completion tokens", ""),
        ("generation", "rollout generation", "s"),
        ("update", "policy update", "s"),
        ("total", "total step", "s"),
        ("peak_rss_gb", "peak RSS", "GB"),
    ):
        ratio = v[key] / b[key] if b[key] else float("nan")
        print(f"  {name + (f' ({unit})' if unit else ''):<22}{b[key]:>12.2f}{v[key]:>12.2f}{ratio:>17.2f}x")
    if b["tokens"] != v["tokens"]:
        print("  (the two rollouts differ: the override changes sampling, so times are not comparable)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=8, help="traces for the runner comparison")
    parser.add_argument("--max-agent-output", type=int, default=128)
    parser.add_argument(
        "--examples",
        default=None,
        help="few-shot examples file for the prompts (default: none, as configs/training.yaml)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Hydra override of the step's config"
    )
    parser.add_argument(
        "--compare", action="append", default=[], metavar="KEY=VALUE",
        help="run the step without and with this override side by side (fresh processes)",
    )  # fmt: skip
    parser.add_argument(
        "--mini", metavar="ADAPTER", default=None,
        help="time a mini_grpo step instead (configs/mini_grpo.yaml, continuing this SFT adapter)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="rollout seed of --compare runs")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-speedup", action="store_true")
    args = parser.parse_args()

    if args.compare:
        compare(args)
        return
    if args.child_json:
        s = one_grpo_step(args)
        s["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(json.dumps(s))
        return
    if not args.skip_step:
        s = one_grpo_step(args)
        other = max(0.0, s["rollout"] - s["generation"] - s["sandbox"])
        print(
            f"\nOne GRPO step (embedded SmolLM2-135M, LoRA, {s['traces']} traces, {s['tokens']} completion tokens, "
            f"{s['snippets']} snippets), CPU:"
        )
        rows = [
            ("rollout generation", s["generation"]),
            ("sandbox", s["sandbox"]),
            ("rollout other", other),
            ("rewards", s["rewards"]),
            ("policy update", s["update"]),
            ("total step", s["total"]),
        ]
        for name, seconds in rows:
            print(f"  {name:<20} {seconds:8.2f} s  {100 * seconds / s['total']:5.1f} %")
        print("  (generation and sandbox overlap when traces run concurrently; 'rollout other' is the rest)")
        print(
            f"  peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB"
        )

    if not args.skip_speedup:
        r = runner_speedup(args)
        b, o = r["batched"], r["one at a time"]
        print(
            f"\nAgent runner, the same {args.traces} seeded traces (max_agent_output {args.max_agent_output}):"
        )
        print(f"  {'':<16}{'batched':>12}{'one at a time':>16}")
        print(f"  {'wall (s)':<16}{b['wall']:>12.2f}{o['wall']:>16.2f}")
        print(f"  {'tokens':<16}{b['tokens']:>12d}{o['tokens']:>16d}")
        print(f"  {'tokens/s':<16}{b['tokens'] / b['wall']:>12.1f}{o['tokens'] / o['wall']:>16.1f}")
        print(f"  {'tool calls':<16}{b['tool_calls']:>12d}{o['tool_calls']:>16d}")
        print(f"  speedup (tokens/s): {(b['tokens'] / b['wall']) / (o['tokens'] / o['wall']):.2f}x")


if __name__ == "__main__":
    main()
