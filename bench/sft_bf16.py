"""The Mini-DeepMath SFT step on CPU: bf16 autocast against float32, side by side.

The step is what `python -m deep_math.training.sft` runs on the embedded SmolLM2-135M: LoRA
(configs/sft.yaml: r 32, rsLoRA, all linear layers of the last 10 decoder layers), a batch of 8
sequences of 136 tokens (the mean SFT trace length), forward + backward + AdamW step. Rounds
alternate between the two precisions so machine noise hits both alike; the ratio is of medians.

    python bench/sft_bf16.py [--rounds 4] [--batch 8] [--tokens 136]

On a CPU without bf16 hardware (no avx512_bf16 / amx_bf16 flag) autocast is emulated: expect a
ratio below 1, which is why `train.bf16: null` turns it on only where the flag is present.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=136)
    args = parser.parse_args()

    from omegaconf import OmegaConf
    from peft import get_peft_model

    from deep_math.models import load_model
    from deep_math.training.builders import cpu_has_native_bf16
    from deep_math.training.sft import build_lora_config, load_sft_config

    raw = OmegaConf.load("configs/sft.yaml")
    for key in ("hydra", "defaults"):  # Hydra's own keys (${now:...} resolves only under Hydra)
        raw.pop(key, None)
    cfg = load_sft_config(raw)
    model = load_model(None, dtype="auto", device="cpu")
    model = get_peft_model(model, build_lora_config(cfg, model.config.num_hidden_layers))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), generator=generator)

    def step(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    times: dict[bool, list[float]] = {False: [], True: []}
    step(False), step(True)  # warm-up (oneDNN kernels for both precisions)
    for _ in range(args.rounds):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"CPU bf16 hardware: {cpu_has_native_bf16()}, torch threads: {torch.get_num_threads()}")
    print(
        f"SFT step ({args.batch} x {args.tokens} tokens, LoRA): float32 {fp32:.2f} s, bf16 autocast {bf16:.2f} s"
    )
    print(f"bf16 speedup: {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
