"""The inference run: problems -> prompts -> agent traces (k per problem) -> generated file."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

from deep_math.agent.trace import Trace
from deep_math.engines.base import SamplingParams
from deep_math.inference.config import InferenceConfig
from deep_math.inference.records import GeneratedFile
from deep_math.records import problem_record
from deep_math.seeds import derive_seed

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    problems: int
    skipped: int
    samples: int
    seconds: float
    tool_calls: int
    errors: int
    answered: int
    generated_file: str

    def line(self) -> str:
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.problems} problems ({self.skipped} already done), {self.samples} samples in "
            f"{self.seconds:.1f} s ({rate:.2f} samples/s), {self.tool_calls} tool calls, "
            f"{self.answered} boxed answers, {self.errors} errors -> {self.generated_file}"
        )


def build_meta(cfg: InferenceConfig) -> dict:
    from deep_math.models import EMBEDDED_MODEL

    m = cfg.model
    return {
        "model": m.model_name_or_path or EMBEDDED_MODEL,
        "lora_path": m.lora_path,
        "engine": m.engine,
        "agent": m.math_agent,
        "template": m.template,
        "examples": m.examples if m.math_agent else None,
        "samples": m.sampling,
        "max_steps": cfg.agent.max_steps,
        "max_agent_output": cfg.agent.max_agent_output,
        # What this arm could generate per trace: the same total for baseline and agent.
        "budget": {
            "total_tokens": cfg.agent.max_agent_output,
            "tokens_per_call": min(m.generation.max_new_tokens, cfg.agent.max_agent_output)
            if m.math_agent
            else None,
        },
        "sampling": asdict(m.generation),
        "dataset": cfg.hf_tag or "sample",
        "split": cfg.split,
        "examples_sha256": _examples_digest(m.examples) if m.math_agent and m.examples else None,
    }


def _examples_digest(examples: str) -> str:
    """sha256 of the few-shot examples text, so a resumed run notices edited examples."""
    import hashlib

    from deep_math.prompts import load_examples

    return hashlib.sha256(load_examples(examples).encode()).hexdigest()


def unique_ids(problems) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    ids = []
    for p in problems:
        seen[p.id] += 1
        ids.append(p.id if seen[p.id] == 1 else f"{p.id}#{seen[p.id]}")
    if len(ids) != len(set(ids)):
        raise ValueError("could not make problem ids unique; set id_key to a unique column")
    return ids


def make_record(problem, pid: str, traces: list[Trace], meta: dict) -> dict:
    return problem_record(pid, problem.problem, problem.answer, [t.sample_record() for t in traces], meta)


def run_inference(cfg: InferenceConfig, engine=None) -> RunSummary:
    """Generate cfg.model.sampling traces per problem and append them to cfg.generated_file.

    `engine` may be passed in (tests, benchmarks); otherwise it is built from cfg.model.
    """
    from tqdm.auto import tqdm

    from deep_math.agent.runner import AgentRunner
    from deep_math.data import load_problems
    from deep_math.engines import build_engine
    from deep_math.prompts import build_prompt_ids, load_examples

    m = cfg.model
    problems = load_problems(
        cfg.hf_tag,
        split=cfg.split,
        problem_key=cfg.problem_key,
        answer_key=cfg.answer_key,
        id_key=cfg.id_key,
        limit=cfg.limit,
    )
    ids = unique_ids(problems)
    meta = build_meta(cfg)
    start = time.perf_counter()
    with GeneratedFile(cfg.generated_file, meta, overwrite=cfg.overwrite) as out:
        todo = [i for i, pid in enumerate(ids) if pid not in out.done_ids]
        skipped = len(problems) - len(todo)
        if not todo:
            log.info("All %d problems are already in %s", len(problems), cfg.generated_file)
            return RunSummary(len(problems), skipped, 0, 0.0, 0, 0, 0, cfg.generated_file)
        own_engine = engine is None
        if own_engine:
            engine = build_engine(m.engine, **m.engine_kwargs())
        examples = load_examples(m.examples) if m.math_agent and m.examples else ""
        agent_cfg = cfg.agent
        prompts, params, owners = [], [], []
        g = m.generation
        for i in todo:
            ids_i = build_prompt_ids(
                engine.tokenizer, problems[i].problem, template=m.template, examples=examples
            )
            for j in range(m.sampling):
                prompts.append(ids_i)
                params.append(
                    SamplingParams(
                        temperature=g.sampling_temperature(),
                        top_p=g.top_p,
                        top_k=g.top_k,
                        max_tokens=g.max_new_tokens,
                        seed=None if g.seed is None else derive_seed(g.seed, "sample", i, j),
                    )
                )
                owners.append((i, j))

        pending: dict[int, dict[int, Trace]] = defaultdict(dict)
        stats = {"samples": 0, "tool_calls": 0, "errors": 0, "answered": 0}
        bar = tqdm(total=len(todo), desc="problems", unit="problem", disable=not cfg.progress)

        def on_trace(k: int, trace: Trace) -> None:
            i, j = owners[k]
            pending[i][j] = trace
            stats["samples"] += 1
            stats["tool_calls"] += trace.tool_calls
            stats["errors"] += trace.finish_reason == "error"
            stats["answered"] += trace.finish_reason == "answer"
            if len(pending[i]) == m.sampling:
                done = pending.pop(i)
                traces = [done[s] for s in range(m.sampling)]
                out.write(make_record(problems[i], ids[i], traces, meta))
                bar.update(1)
            elapsed = time.perf_counter() - start
            bar.set_postfix(samples_s=f"{stats['samples'] / elapsed:.2f}", tool_calls=stats["tool_calls"])

        # The transformers engine merges the adapter at load time; vLLM and servers take it per request.
        request_lora = m.lora_path if m.engine in ("vllm", "server") else None
        runner = AgentRunner(engine, agent_cfg, use_agent=m.math_agent, max_new_tokens=g.max_new_tokens)
        try:
            runner.run(prompts, params, lora_path=request_lora, on_trace=on_trace)
        finally:
            runner.close()
            bar.close()
            if own_engine:
                engine.close()
    return RunSummary(
        problems=len(problems),
        skipped=skipped,
        samples=stats["samples"],
        seconds=time.perf_counter() - start,
        tool_calls=stats["tool_calls"],
        errors=stats["errors"],
        answered=stats["answered"],
        generated_file=cfg.generated_file,
    )
