"""Linear temperature schedule, and that it reaches both the rollouts and the loss's logprobs."""

from __future__ import annotations

import pytest
import torch

from deep_math.training.schedule import LinearTemperatureSchedule

PAPER = LinearTemperatureSchedule(temp_a=1.2, temp_a_step=0, temp_b=0.7, temp_b_step=1000)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1.2), (250, 1.075), (500, 0.95), (999, 0.7005), (1000, 0.7), (5000, 0.7)],
)
def test_paper_schedule(step, expected):
    assert PAPER(step) == pytest.approx(expected)


def test_constant_before_start_and_after_end():
    s = LinearTemperatureSchedule(temp_a=1.0, temp_a_step=10, temp_b=0.5, temp_b_step=20)
    assert [s(0), s(10), s(15), s(20), s(30)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temp_a_step": 1000, "temp_b_step": 200}, r"temp_a_step \(1000\) must be < temp_b_step \(200\)"),
        ({"temp_b": 0.0}, "temperatures must be > 0"),
        ({"temp_a_step": -1}, "temp_a_step must be >= 0"),
    ],
)
def test_invalid_schedules_fail_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinearTemperatureSchedule(**kwargs)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_schedule_changes_sampling_and_loss_temperature(tokenizer, tmp_path):
    """At two steps: the rollout samples at schedule(step) and the loss's logprobs are
    log_softmax(logits / schedule(step)), computed through TRL's own logprob path."""
    from deep_math.data import Problem
    from deep_math.testing import tiny_config, tiny_model_dir
    from deep_math.training.builders import build_trainer, load_policy

    model_dir = tiny_model_dir(tokenizer, tmp_path / "model")
    cfg = tiny_config(model_dir, tmp_path / "out", rewards={"code_use": 1.0})
    model, tok = load_policy(cfg)
    trainer = build_trainer(cfg, [Problem("p", "What is 1+1?", "2")], model=model, tokenizer=tok)
    try:
        ids = torch.tensor([tokenizer.encode("What is 1+1? The answer is 2.")])
        mask = torch.ones_like(ids)
        keep = 4
        for step in (0, 1):
            trainer.state.global_step = step
            trainer.set_temperature(trainer.temperature_schedule(step))
            expected_t = cfg.temperature(step)  # 1.2 then 0.95
            sampling = trainer.deep_math_rollout.sampling(trainer, 2)
            assert [s.temperature for s in sampling] == pytest.approx([expected_t, expected_t])

            with torch.no_grad():
                logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
                logits = trainer.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            manual = torch.log_softmax(logits.float() / expected_t, dim=-1)
            manual = manual.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)[:, -keep:]
            torch.testing.assert_close(logps, manual, atol=1e-4, rtol=1e-4)
            at_one = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1))
            assert not torch.allclose(logps, at_one.squeeze(-1)[:, -keep:], atol=1e-3)
    finally:
        trainer.deep_math_rollout.close()
