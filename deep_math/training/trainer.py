"""GRPOTrainer with a temperature that changes during training.

TRL 1.16 reads `args.temperature` once, in `GRPOTrainer.__init__` (`self.temperature = args.temperature`):
- sampling: TRL's own generation paths copy it into their sampling config at init. With
  `rollout_func` (our case) TRL does not sample: our rollout reads `trainer.temperature` at every
  generation (`deep_math/training/rollout.py`), so updating that attribute changes sampling.
- loss: `__init__` calls `trl.trainer.utils.add_fused_lm_head(model, temperature=self.temperature)`
  on the policy's base model (and the reference model). That installs a fused LM-head forward
  whose log-probs are `log_softmax(logits / temperature)`, with `temperature` captured in the
  closure of the installed function and read on every call. `_get_per_token_logps_and_entropies`
  (old logps and reference logps in `_generate_and_score_completions`, the policy logps in
  `_compute_loss`) always goes through it. `set_temperature` updates that captured value.

We hold the installed function itself (found right after `GRPOTrainer.__init__`, before
accelerate or DeepSpeed wrap anything), so later wrappers around `forward` do not hide it. If a
TRL upgrade changes this mechanism, construction fails with a message instead of silently
training at a constant temperature; `tests/training/test_schedule.py` checks the temperature actually
used by the loss.

`training_step` applies the schedule before `_prepare_inputs` generates, so the rollouts of
optimizer step s and the loss of step s use schedule(s). Generations reused with
`num_iterations > 1` are scored with the temperature of the step that reuses them.
"""

from __future__ import annotations

import logging
from typing import Any

from trl import GRPOTrainer

from deep_math.training.checkpoints import last_complete_checkpoint
from deep_math.training.ref_sync import LoraRefSyncCallback, add_ref_adapter
from deep_math.training.schedule import LinearTemperatureSchedule

log = logging.getLogger(__name__)


class FusedHeadTemperature:
    """Read/write access to the temperature of the fused LM head TRL installed on `model`."""

    def __init__(self, model: Any):
        forward = model.__dict__.get("forward")
        func = getattr(forward, "__func__", None)
        code = getattr(func, "__code__", None)
        if code is None or "temperature" not in code.co_freevars:
            raise RuntimeError(
                f"{type(model).__name__} has no TRL fused LM head with a temperature; this TRL version applies "
                "the temperature differently (see deep_math/training/trainer.py), so a schedule cannot work."
            )
        self._cell = func.__closure__[code.co_freevars.index("temperature")]

    @property
    def value(self) -> float:
        return float(self._cell.cell_contents)

    @value.setter
    def value(self, temperature: float) -> None:
        self._cell.cell_contents = float(temperature)


class DeepMathGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + a temperature schedule that changes both sampling and the loss's logprobs,
    + reference-model sync for LoRA (which TRL 1.16 refuses; see `ref_sync.py`).

    temperature_schedule: None keeps TRL's constant `args.temperature`.
    lora_ref_sync: (mixup alpha, every n steps) to keep the reference as a synced "ref" adapter;
        pass it instead of `args.sync_ref_model` (which must then be False)."""

    def __init__(
        self,
        *args: Any,
        temperature_schedule: LinearTemperatureSchedule | None = None,
        lora_ref_sync: tuple[float, int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.temperature_schedule = temperature_schedule
        self.ref_sync: LoraRefSyncCallback | None = None
        if lora_ref_sync is not None:
            if not hasattr(self.model, "peft_config"):
                raise ValueError("lora_ref_sync needs a peft model; without LoRA use args.sync_ref_model")
            if self.beta == 0.0:
                raise ValueError("reference-model sync needs beta > 0 (with beta 0 there is no reference)")
            alpha, steps = lora_ref_sync
            self.ref_sync = LoraRefSyncCallback(self.model, alpha, steps)
            modules = add_ref_adapter(self.model)
            self.add_callback(self.ref_sync)
            log.info("Reference = a 'ref' LoRA adapter over %d modules, synced with alpha %s every %d steps",
                     modules, alpha, steps)  # fmt: skip
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._loss_heads = [FusedHeadTemperature(base)]
        if self.ref_model is not None:
            ref = getattr(self.ref_model, "module", self.ref_model)  # DeepSpeed wraps the reference model
            self._loss_heads.append(FusedHeadTemperature(ref))
        if temperature_schedule is not None:
            self.set_temperature(temperature_schedule(self.state.global_step))

    @property
    def loss_temperature(self) -> float:
        """The temperature the loss's log-probs use right now."""
        return self._loss_heads[0].value

    def set_temperature(self, temperature: float) -> None:
        """Use `temperature` from now on, for rollouts (`self.temperature`) and the loss's logprobs."""
        self.temperature = float(temperature)
        for head in self._loss_heads:
            head.value = self.temperature

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:  # the newest *complete* checkpoint (see checkpoints.py)
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}")
        if self.ref_sync is not None:
            self.ref_sync.resume_from = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch):
        if self.temperature_schedule is not None:
            self.set_temperature(self.temperature_schedule(self.state.global_step))
        self._metrics["train"]["temperature"].append(self.temperature)
        return super().training_step(model, inputs, num_items_in_batch)
