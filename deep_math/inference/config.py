"""Schema of configs/inference.yaml (validated after Hydra composes it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deep_math.agent.config import AgentConfig, flat_agent_keys


@dataclass
class GenerationConfig:
    """Sampling of every generation call. max_new_tokens caps one step (one generation call);
    agent.max_agent_output caps the whole trace. do_sample=false decodes greedily (temperature 0)."""

    def sampling_temperature(self) -> float:
        return self.temperature if self.do_sample else 0.0

    do_sample: bool = True  # false: greedy decoding, whatever temperature says
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_new_tokens: int = 3000
    seed: int = 42


@dataclass
class ModelConfig:
    model_name_or_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    engine: str = "transformers"
    math_agent: bool = False  # the paper's default: its baseline command runs without +model.math_agent
    lora_path: str | None = None
    # With the agent on the embedded model (and no lora_path): load the shipped Mini-DeepMath SFT
    # adapter and its prompt (template "mini"), so the default model calls the tool. false = bare model.
    embedded_adapter: bool = True
    sampling: int = 1  # samples per problem (16 for maj@16)
    template: str | None = None  # None: "agent" with math_agent, else "baseline"
    examples: str | None = "deep_math/fewshot.txt"  # few-shot examples (agent template only)
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 32
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    # Passed to the vLLM engine's constructor as is (and on to vllm.LLM), overriding the keys above:
    # +model.vllm_params.max_lora_rank=32 +model.vllm_params.enable_prefix_caching=true
    vllm_params: dict[str, Any] = field(default_factory=dict)
    base_url: str = "http://127.0.0.1:8000"
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if self.sampling < 1:
            raise ValueError(f"model.sampling must be >= 1, got {self.sampling}")
        if self._shipped_adapter_applies():
            from deep_math.models import EMBEDDED_ADAPTER_TEMPLATE, ModelLoadError, embedded_adapter_dir

            try:
                self.lora_path = str(embedded_adapter_dir())
            except ModelLoadError as exc:
                raise ValueError(str(exc)) from None
            self.template = self.template or EMBEDDED_ADAPTER_TEMPLATE
        if self.template is None:
            self.template = "agent" if self.math_agent else "baseline"
        if self.vllm_params and self.engine != "vllm":
            raise ValueError(
                f"model.vllm_params {sorted(self.vllm_params)} configure the vLLM engine, but engine is "
                f"'{self.engine}': add +model.use_vllm=true (or model.engine=vllm), or drop vllm_params"
            )

    def _shipped_adapter_applies(self) -> bool:
        """Before `__post_init__` resolves lora_path: the agent on the embedded model with no
        adapter of the user's, so the shipped one applies."""
        from deep_math.models import is_embedded

        local = self.engine != "server"  # a server runs the model (and adapters) it was started with
        return (
            self.embedded_adapter
            and self.math_agent
            and local
            and not self.lora_path
            and is_embedded(self.model_name_or_path)
        )

    def engine_kwargs(self) -> dict[str, Any]:
        """The options of this config the engine's constructor takes (read from its signature)."""
        from deep_math import engines

        kwargs = engines.engine_kwargs(self.engine, vars(self))
        if self.engine == "vllm":
            kwargs.update(self.vllm_params)  # vLLM names its own unknown arguments
        return kwargs


@dataclass
class InferenceConfig:
    hf_tag: str | None = None  # hub dataset tag or local .jsonl/.parquet; None: bundled sample
    split: str = "test"
    problem_key: str = "problem"
    answer_key: str = "answer"
    id_key: str = "id"
    limit: int | None = None
    generated_file: str = "outputs/generated.jsonl"
    overwrite: bool = False  # start the generated file afresh instead of resuming it
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    # The agent loop: one schema with training's agent.* and the server's (max_steps, max_agent_output,
    # sandbox_timeout, sandbox_memory_mb, ...); the paper's flat +model.max_steps=50 maps onto it.
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or null for all), got {self.limit}")


def _use_vllm(value: Any, data: dict) -> None:
    if value:
        data.setdefault("model", {})["engine"] = "vllm"


# The paper's command-line keys that are not schema keys, mapped onto the schema.
LEGACY_KEYS = {
    **flat_agent_keys("model."),  # +model.max_steps=50 -> agent.max_steps
    "model.use_vllm": _use_vllm,
    "model.generation.max_tokens": "model.generation.max_new_tokens",
    "dataset": "hf_tag",
}
