"""Slow: a short seeded GRPO run from a (deliberately short) SFT adapter raises the mean accuracy
reward on a fixed dev set by a clear margin over its start. Real model, real sandbox, CPU."""

from __future__ import annotations

import json

import pytest

from deep_math.testing import compose_module

MARGIN = 0.15  # absolute accuracy on the dev problems


@pytest.mark.slow
def test_grpo_from_sft_raises_dev_accuracy(tmp_path):
    from deep_math.training.mini_grpo import run_mini_grpo
    from deep_math.training.sft import run_sft

    # A short cold start: the format is learnt but the answers are not all right yet, so GRPO has
    # room to improve them.
    sft = compose_module(
        "sft", [f"train.output_dir={tmp_path / 'sft'}", "data.limit=64", "train.max_steps=6", "train.seed=0"]
    )
    run_sft(sft)
    grpo = compose_module(
        "mini_grpo",
        [
            f"init_adapter={tmp_path / 'sft'}",
            f"train.output_dir={tmp_path / 'grpo'}",
            "dev_eval=mini:dev:16",
            "train.max_steps=10",
            "train.seed=0",
            "rollout.seed=1234",
        ],
    )
    out = run_mini_grpo(grpo)
    scores = json.loads((out / "dev_accuracy.json").read_text())
    before, after = scores["before"]["accuracy"], scores["after"]["accuracy"]
    assert after >= before + MARGIN, scores
