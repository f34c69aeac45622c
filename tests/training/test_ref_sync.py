"""Reference-model sync for LoRA: the mix of two adapters' weight deltas, and the "ref" adapter."""

from __future__ import annotations

import pytest
import torch

from deep_math.training.ref_sync import REF_ADAPTER, add_ref_adapter, lora_pairs, mix_lora_


def factors(r, out, inn, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g)


@pytest.mark.parametrize(("out", "inn"), [(30, 20), (5, 40), (40, 6)])
def test_the_mix_is_the_best_rank_r_approximation(out, inn):
    r, alpha = 4, 0.4
    pol_a, pol_b = factors(r, out, inn, 0)
    ref_a, ref_b = factors(r, out, inn, 1)
    mix = alpha * pol_b @ pol_a + (1 - alpha) * ref_b @ ref_a
    u, s, vh = torch.linalg.svd(mix)
    best = (u[:, :r] * s[:r]) @ vh[:r]
    error = mix_lora_(ref_a, ref_b, pol_a, pol_b, alpha)
    assert torch.allclose(ref_b @ ref_a, best, atol=1e-4)
    assert error == pytest.approx(float(torch.linalg.norm(mix - best) / torch.linalg.norm(mix)), rel=1e-4)


def test_the_first_sync_from_a_zero_reference_is_exact():
    pol_a, pol_b = factors(4, 30, 20, 0)
    ref_a, ref_b = torch.zeros(4, 20), torch.zeros(30, 4)
    assert mix_lora_(ref_a, ref_b, pol_a, pol_b, 0.4) == 0.0
    assert torch.allclose(ref_b @ ref_a, 0.4 * pol_b @ pol_a, atol=1e-5)


def test_ref_adapter_is_a_frozen_copy_and_training_stays_on_the_policy(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for module in model.modules():  # a policy adapter that has moved (B starts at 0)
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            module.lora_B["default"].weight.data.normal_()
    modules = add_ref_adapter(model)
    pairs = list(lora_pairs(model))
    assert modules == len(pairs) > 0
    for (pol_a, pol_b), (ref_a, ref_b) in pairs:
        assert torch.equal(pol_a, ref_a) and torch.equal(pol_b, ref_b)
        assert pol_a.requires_grad and not ref_a.requires_grad and not ref_b.requires_grad
    assert model.active_adapters == ["default"] and REF_ADAPTER in model.peft_config


def test_reference_logprobs_carry_no_dropout_noise_in_train_mode(tiny_model):
    """TRL computes the reference log-probs with the model in train mode; the policy's dropout
    must not reach the frozen reference (it would put noise into the KL)."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import use_adapter

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules="all-linear")
    model = get_peft_model(tiny_model, config)
    for module in model.modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            module.lora_B["default"].weight.data.normal_()
    add_ref_adapter(model)
    model.train()
    ids = torch.arange(1, 17).unsqueeze(0)

    def logits():
        with torch.no_grad():
            return model(input_ids=ids).logits

    policy = [logits() for _ in range(2)]
    assert not torch.allclose(policy[0], policy[1]), "the policy adapter's dropout should be active"
    with use_adapter(model, adapter_name=REF_ADAPTER):  # what TRL does for the reference
        ref = [logits() for _ in range(2)]
    assert torch.equal(ref[0], ref[1])
    model.eval()
    assert torch.allclose(ref[0], logits(), atol=1e-5)  # the copy equals the policy without dropout
    assert model.peft_config["default"].lora_dropout == 0.5  # the policy keeps its dropout


@pytest.fixture
def tiny_model(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from deep_math.testing import tiny_model_dir

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir(tokenizer, tmp_path / "tiny"))
