"""The linear temperature schedule of the paper: T_a at step a -> T_b at step b.

`LinearTemperatureSchedule(temp_a=1.2, temp_a_step=0, temp_b=0.7, temp_b_step=1000)(step)` is
temp_a up to temp_a_step, temp_b from temp_b_step on, and linear in between. Steps are optimizer
steps (`TrainerState.global_step`). How the value reaches sampling and the loss is in
`deep_math/training/trainer.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinearTemperatureSchedule:
    temp_a: float = 1.2
    temp_a_step: int = 0
    temp_b: float = 0.7
    temp_b_step: int = 1000

    def __post_init__(self) -> None:
        if self.temp_a <= 0 or self.temp_b <= 0:
            raise ValueError(f"temperatures must be > 0, got temp_a={self.temp_a}, temp_b={self.temp_b}")
        if self.temp_a_step < 0:
            raise ValueError(f"temp_a_step must be >= 0, got {self.temp_a_step}")
        if self.temp_a_step >= self.temp_b_step:
            raise ValueError(f"temp_a_step ({self.temp_a_step}) must be < temp_b_step ({self.temp_b_step})")

    def __call__(self, step: int) -> float:
        if step <= self.temp_a_step:
            return float(self.temp_a)
        if step >= self.temp_b_step:
            return float(self.temp_b)
        frac = (step - self.temp_a_step) / (self.temp_b_step - self.temp_a_step)
        return float(self.temp_a + frac * (self.temp_b - self.temp_a))

    @classmethod
    def constant(cls, temperature: float) -> LinearTemperatureSchedule:
        return cls(temp_a=temperature, temp_a_step=0, temp_b=temperature, temp_b_step=1)
