"""The weights pushed to the generation server: merged LoRA policy, computed without touching the
training model (in-place merge/unmerge drifted frozen bf16 base weights on every sync)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def peft_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, lora)


def test_a_hundred_syncs_leave_the_bf16_base_weights_bit_identical(peft_model):
    from deep_math.training.weight_sync import iter_policy_weights

    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    for _ in range(100):
        for _name, tensor in iter_policy_weights(peft_model):
            tensor.sum()  # consumed, as the client does
    changed = [n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == []


def test_pushed_weights_equal_the_merged_model_and_are_not_live_views(peft_model):
    from deep_math.training.weight_sync import iter_policy_weights

    pushed = dict(iter_policy_weights(peft_model))
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    expected = (layer.base_layer.weight.float() + layer.get_delta_weight("default").float()).to(
        torch.bfloat16
    )
    assert torch.equal(pushed[q], expected) and not torch.equal(pushed[q], layer.base_layer.weight)
    merged = {n: t.clone() for n, t in peft_model.merge_and_unload().state_dict().items()}
    assert set(pushed) <= set(merged) and not any("lora" in n for n in pushed)
    worst = max((pushed[n].float() - merged[n].float()).abs().max().item() for n in pushed)
    assert worst <= 2**-6  # peft's in-place bf16 merge rounds once more than our float32 sum
