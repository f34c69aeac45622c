"""Reference-model sync for LoRA training (the paper's mixup alpha 0.4 every 300 steps).

TRL 1.16 refuses `sync_ref_model` with a PEFT model: its reference is then the base model with
the adapter disabled, and there is no reference model to mix into. TRL does use an adapter named
"ref" for the reference log-probs when the model has one, so with LoRA we keep the reference as
that second adapter and mix into it:

    delta_ref <- alpha * delta_policy + (1 - alpha) * delta_ref      (delta = B @ A, per module)

Both adapters share one LoRA config (rank r, scaling), so the scaling factors out. The mix has
rank <= 2r; the "ref" adapter gets its best rank-r approximation (truncated SVD, computed from
the factors: QR of the stacked B's and A's, then the SVD of a 2r x 2r core). The first sync is
exact (delta_ref starts at 0, the base model, as TRL's reference without sync); later ones drop
the mix's smallest singular values, and the relative error is logged.

The "ref" adapter has no LoRA dropout. TRL computes the reference log-probs with the model in
train mode; with the policy's dropout (the paper's 0.1) on the frozen reference, the KL term
would carry dropout noise and never be exactly 0, even right after a sync with alpha 1.

Works where every rank holds the full LoRA weights (single process, DDP, DeepSpeed ZeRO-2); every
rank computes the same mix from the same weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

REF_ADAPTER = "ref"


@torch.no_grad()
def mix_lora_(
    ref_a: torch.Tensor, ref_b: torch.Tensor, pol_a: torch.Tensor, pol_b: torch.Tensor, alpha: float
) -> float:
    """Set (ref_b, ref_a) in place to the best rank-r factors of alpha * pol_b @ pol_a +
    (1 - alpha) * ref_b @ ref_a. A: (r, in), B: (out, r). Returns the relative Frobenius error of
    the truncation (0 when the mix has rank <= r)."""
    r = ref_a.shape[0]
    wp, wr = math.sqrt(alpha), math.sqrt(1.0 - alpha)
    b = torch.cat([wp * pol_b.float(), wr * ref_b.float()], dim=1)  # (out, 2r)
    a = torch.cat([wp * pol_a.float(), wr * ref_a.float()], dim=0)  # (2r, in)
    qb, rb = torch.linalg.qr(b)  # b = qb @ rb
    qa, ra = torch.linalg.qr(a.T)  # a = ra.T @ qa.T
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # b @ a = qb @ (u diag(s) vh) @ qa.T
    k = min(r, s.shape[0])
    root = s[:k].sqrt()
    new_b = torch.zeros_like(ref_b, dtype=torch.float32)
    new_a = torch.zeros_like(ref_a, dtype=torch.float32)
    new_b[:, :k] = (qb @ u[:, :k]) * root
    new_a[:k] = root.unsqueeze(1) * (vh[:k] @ qa.T)
    ref_b.copy_(new_b)
    ref_a.copy_(new_a)
    total = float(s.square().sum())
    return math.sqrt(float(s[k:].square().sum()) / total) if total > 0 else 0.0


def lora_pairs(model: Any, adapter: str = "default"):
    """Per LoRA module holding both adapters: ((A, B) of `adapter`, (A, B) of the reference)."""
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if lora_a is None or lora_b is None or adapter not in lora_a or REF_ADAPTER not in lora_a:
            continue
        yield (
            (lora_a[adapter].weight, lora_b[adapter].weight),
            (lora_a[REF_ADAPTER].weight, lora_b[REF_ADAPTER].weight),
        )


def add_ref_adapter(model: Any, adapter: str = "default") -> int:
    """Add a frozen "ref" adapter, a copy of `adapter` (LoRA only) without dropout, to a peft model;
    returns the number of LoRA modules it covers."""
    import dataclasses

    from peft import LoraConfig

    config = model.peft_config[adapter]
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"reference-model sync with peft needs a LoRA adapter, got {type(config).__name__}; "
            "set train.sync_ref_model=false"
        )
    if REF_ADAPTER not in model.peft_config:
        # Same rank, alpha and rsLoRA (so the same scaling, which mix_lora_ relies on), no dropout.
        model.add_adapter(REF_ADAPTER, dataclasses.replace(config, lora_dropout=0.0))
    model.set_adapter(adapter)  # keep training the policy adapter
    pairs = 0
    with torch.no_grad():
        for (pol_a, pol_b), (ref_a, ref_b) in lora_pairs(model, adapter):
            ref_a.copy_(pol_a)
            ref_b.copy_(pol_b)
            pairs += 1
    for name, param in model.named_parameters():
        if f".{REF_ADAPTER}." in name:
            param.requires_grad_(False)
    if pairs == 0:
        raise ValueError("the peft model has no LoRA modules to keep a reference adapter for")
    return pairs


class LoraRefSyncCallback(TrainerCallback):
    """Every `steps` optimizer steps, mix the policy adapter into the "ref" adapter with `alpha`."""

    def __init__(self, model: Any, alpha: float, steps: int, adapter: str = "default"):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ref_model_mixup_alpha must be in (0, 1], got {alpha}")
        if steps < 1:
            raise ValueError(f"ref_model_sync_steps must be >= 1, got {steps}")
        self.model, self.alpha, self.steps, self.adapter = model, alpha, steps, adapter
        self.resume_from: str | None = None  # set by the trainer's train(resume_from_checkpoint=...)

    def sync(self) -> float:
        """Mix once; returns the largest relative truncation error over the modules."""
        worst = 0.0
        for (pol_a, pol_b), (ref_a, ref_b) in lora_pairs(self.model, self.adapter):
            worst = max(worst, mix_lora_(ref_a, ref_b, pol_a, pol_b, self.alpha))
        return worst

    def on_train_begin(self, args, state, control, **kwargs):
        # After every backend restored the checkpoint (plain: the adapters; DeepSpeed: its module
        # states, which leave out frozen parameters such as the "ref" adapter).
        if self.resume_from:
            restored = load_adapters(self.model, self.resume_from, self.adapter)
            log.info("Restored adapters %s from %s", restored, self.resume_from)
            if REF_ADAPTER not in restored:
                log.warning(
                    "%s has no reference adapter; the reference restarts from the base model",
                    self.resume_from,
                )
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps == 0:
            worst = self.sync()
            log.info(
                "Reference adapter synced at step %d (alpha %.2f); largest rank-truncation error %.2e",
                state.global_step,
                self.alpha,
                worst,
            )
        return control


def load_adapters(model: Any, checkpoint: str, adapter: str = "default") -> list[str]:
    """Restore the policy adapter (`<checkpoint>/adapter_model.safetensors`) and the "ref" one
    (`<checkpoint>/ref/`, where peft saves a second adapter). Needed because transformers' resume,
    when a checkpoint has adapter subfolders, loads only those: the policy would restart from zero.
    Returns the adapters restored."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    restored = []
    for name, path in ((adapter, Path(checkpoint)), (REF_ADAPTER, Path(checkpoint) / REF_ADAPTER)):
        weights = path / "adapter_model.safetensors"
        if weights.is_file():
            set_peft_model_state_dict(model, load_file(str(weights)), adapter_name=name)
            restored.append(name)
    return restored
