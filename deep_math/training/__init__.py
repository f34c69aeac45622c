"""GRPO training of the DeepMath agent: rewards, temperature schedule, rollout_func, trainer, builders.

Entry point: `training.py` (Hydra, `configs/training.yaml`) -> `builders.run_training`.
"""
