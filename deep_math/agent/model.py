"""Our engines behind smolagents' `Model` interface."""

from __future__ import annotations

from dataclasses import replace

from smolagents.models import ChatMessage, MessageRole, Model, TokenUsage

from deep_math.engines.base import Engine, GenRequest, GenResult, SamplingParams
from deep_math.seeds import derive_seed


class EngineModel(Model):
    """A smolagents Model that generates with a DeepMath engine.

    The agent loop uses `generate_ids` (token ids in, exact ids out: the inline tool format
    continues the same assistant turn, which a chat-message API cannot express). `generate`
    implements the chat interface for callers that want plain smolagents behaviour.
    """

    def __init__(self, engine: Engine, sampling: SamplingParams, lora_path: str | None = None):
        super().__init__(model_id=getattr(engine, "name", "engine"))
        self.engine = engine
        self.sampling = sampling
        self.lora_path = lora_path

    def generate_ids(self, prompt_ids: list[int], max_tokens: int, stop: list[str], step: int) -> GenResult:
        """One generation call; `step` (the trace's call index) names its seed under the trace's."""
        seed = None if self.sampling.seed is None else derive_seed(self.sampling.seed, "call", step)
        params = replace(self.sampling, max_tokens=max_tokens, stop=list(stop), seed=seed)
        (result,) = self.engine.generate([GenRequest(list(prompt_ids), params, self.lora_path)])
        return result

    def generate(
        self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs
    ):
        if response_format is not None or tools_to_call_from:
            raise NotImplementedError("EngineModel supports plain text generation only")
        tokenizer = self.engine.tokenizer
        chat = [m.dict() if hasattr(m, "dict") else dict(m) for m in messages]
        for m in chat:  # smolagents stores content as a list of {"type": "text"} parts
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"])
            m["role"] = str(getattr(m["role"], "value", m["role"]))
        ids = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        result = self.generate_ids(ids, self.sampling.max_tokens, stop_sequences or [], step=0)
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content=result.text,
            raw=result,
            token_usage=TokenUsage(input_tokens=len(ids), output_tokens=len(result.token_ids)),
        )
