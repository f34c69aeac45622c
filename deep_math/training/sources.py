"""Where GRPO rollouts come from: the local policy, or an agent server.

- `PolicyTraceSource`: the agent runner + a `TransformersEngine` wrapping the trainer's own model
  (the peft model on this rank). Rollouts therefore always use the CURRENT policy (the LoRA
  weights of the last optimizer step) with no weight copy. The model is switched to eval mode
  (no LoRA dropout) while the traces run and back to train mode after; the engine generates
  under `torch.inference_mode` in its worker thread. The engine's shared-prefix KV cache (system
  prompt + few-shot examples computed once per batch) is emptied at the start of every rollout:
  the weights only change between rollouts, so within one it is exact.
- `ServerTraceSource`: a `deep_math.vllm_serve_agent` server runs the agent next to its engine.
  Before the first rollout of each optimizer step the main process pushes the policy weights
  (LoRA merged into the base weights) through `AgentVLLMClient.push_weights` (NCCL on CUDA
  with vLLM installed, otherwise HTTP), then all ranks generate.
"""

from __future__ import annotations

import logging
from typing import Any

from deep_math.agent.config import AgentConfig
from deep_math.agent.trace import Trace
from deep_math.engines import check_engine_options
from deep_math.engines.base import SamplingParams

log = logging.getLogger(__name__)


class RunnerTraceSource:
    """Traces from an `AgentRunner` over a given engine (tests pass a ScriptedEngine)."""

    def __init__(self, engine: Any, agent: AgentConfig, sandbox: Any = None):
        from deep_math.agent.runner import AgentRunner

        self.engine = engine
        self.runner = AgentRunner(engine, agent, sandbox=sandbox)

    def generate(
        self, prompt_ids: list[list[int]], sampling: list[SamplingParams], trainer: Any
    ) -> list[Trace]:
        return self.runner.run(prompt_ids, sampling)

    def close(self) -> None:
        self.runner.close()
        self.engine.close()


class PolicyTraceSource:
    """Local rollouts with the trainer's current policy (see the module docstring).

    The engine and the runner (with its sandbox) are built on the first call, when the trainer
    and its model exist. engine_kwargs go to `TransformersEngine` (max_batch_size, batch_wait_ms,
    prefix_cache: default on, refreshed every rollout); they are checked here, so a misspelled one
    fails before the first rollout."""

    def __init__(self, agent: AgentConfig, tokenizer: Any, sandbox: Any = None, **engine_kwargs: Any):
        check_engine_options("transformers", engine_kwargs)
        self.agent = agent
        self.tokenizer = tokenizer
        self.sandbox = sandbox
        self.engine_kwargs = engine_kwargs
        self.engine = None
        self.runner = None
        self._model = None

    def _ensure(self, model: Any) -> None:
        if self.engine is not None and self._model is model:
            return
        self.close()
        from deep_math.agent.runner import AgentRunner
        from deep_math.engines.transformers import TransformersEngine

        kwargs = {"prefix_cache": True, **self.engine_kwargs}
        self.engine = TransformersEngine(model=model, tokenizer=self.tokenizer, **kwargs)
        self.runner = AgentRunner(self.engine, self.agent, sandbox=self.sandbox)
        self._model = model

    def generate(
        self, prompt_ids: list[list[int]], sampling: list[SamplingParams], trainer: Any
    ) -> list[Trace]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        self._ensure(model)
        self.engine.reset_prefix_cache()  # computed with the previous step's weights
        model.eval()
        try:
            return self.runner.run(prompt_ids, sampling)
        finally:
            if was_training:
                model.train()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        if self.engine is not None:
            self.engine.close()
        self.engine = self.runner = self._model = None


class ServerTraceSource:
    """Rollouts from an agent server; weights pushed once per optimizer step (main process)."""

    def __init__(self, client: Any, sync_weights: bool = True):
        self.client = client
        self.sync_weights = sync_weights
        self.transport: str | None = None
        self._synced_step: int | None = None

    def _sync(self, trainer: Any) -> None:
        step = trainer.state.global_step
        if not self.sync_weights or self._synced_step == step:
            return
        accelerator = trainer.accelerator
        if accelerator.is_main_process:
            from deep_math.training.weight_sync import iter_policy_weights

            if self.transport is None:
                self.transport = self.client.init_weight_transport(accelerator.device)
                log.info("Weight sync to the agent server over %s", self.transport)
            model = accelerator.unwrap_model(trainer.model)
            version = self.client.push_weights(lambda: iter_policy_weights(model))
            log.info("Pushed policy weights of step %d to the agent server (version %s)", step, version)
        accelerator.wait_for_everyone()  # no rank generates with the previous weights
        self._synced_step = step

    def generate(
        self, prompt_ids: list[list[int]], sampling: list[SamplingParams], trainer: Any
    ) -> list[Trace]:
        self._sync(trainer)
        return self.client.generate_agent(prompt_ids, sampling)

    def close(self) -> None:
        self.client.close()
