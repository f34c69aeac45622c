"""A reward for smoke runs of `training.py` on a random tiny model.

The real rewards (accuracy, code_use) are 0 for every completion of an untrained random model, so
every advantage is 0 and an optimizer step moves nothing. `distinct_chars` (the fraction of a
completion's characters that are distinct) differs between random completions, so the loss and
the gradients are non-zero and the smoke run exercises a real update. Use it as an import path:

    python training.py ... '++rewards={bench.smoke_rewards.distinct_chars:1.0}'
"""

from deep_math.training.rewards import completion_text


def distinct_chars(completions, **kwargs):
    texts = [completion_text(c) for c in completions]
    return [len(set(t)) / max(len(t), 1) for t in texts]
