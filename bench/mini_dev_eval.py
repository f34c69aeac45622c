"""Mini-DeepMath GRPO dev scoring speed: the prompt-prefix cache on and off, side by side.

    python bench/mini_dev_eval.py [--adapter outputs/mini/sft] [--dev mini:rl_dev:24] [--rounds 2]

`mini_grpo` scores its fixed dev set (greedy agent traces, `dev_accuracy`) before training, every
`dev_every` steps and at the end, on the policy being trained. This loads that policy the way
`mini_grpo` does (base model + trainable adapter, `configs/mini_grpo.yaml`), scores the dev set
with the prefix cache off and on, alternating the order over `--rounds` rounds in one process,
and prints seconds per scoring, the speed ratio, and whether the scores are identical (greedy:
they must be).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--adapter", default="outputs/mini/sft", help="the SFT adapter (python -m deep_math.training.sft)"
    )
    parser.add_argument("--dev", default="mini:rl_dev:24")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from deep_math.data import load_problems
    from deep_math.training.mini_grpo import dev_accuracy, load_mini_grpo_config, load_start_policy

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        raw = compose(
            config_name="mini_grpo", overrides=[f"init_adapter={args.adapter}", f"dev_eval={args.dev}"]
        )
    cfg = load_mini_grpo_config(raw)
    model, tokenizer, cfg = load_start_policy(cfg)
    dev = load_problems(args.dev)
    times: dict[bool, list[float]] = {False: [], True: []}
    scores: dict[bool, list[dict]] = {False: [], True: []}
    for r in range(args.rounds):
        for cache in (False, True) if r % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            scores[cache].append(dev_accuracy(model, tokenizer, dev, cfg, prefix_cache=cache))
            times[cache].append(time.perf_counter() - t0)
            print(f"round {r} prefix_cache={cache}: {times[cache][-1]:.1f} s {scores[cache][-1]}", flush=True)
    off, on = sum(times[False]) / args.rounds, sum(times[True]) / args.rounds
    same = all(s == scores[False][0] for s in scores[False] + scores[True])
    print(
        f"dev scoring of {len(dev)} problems: cache off {off:.1f} s, on {on:.1f} s, speedup {off / on:.2f}x"
    )
    print(f"scores identical across settings and rounds: {same}")


if __name__ == "__main__":
    main()
