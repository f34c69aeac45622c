"""Mini-DeepMath evaluation speed: prompt-prefix sharing and batch size, side by side.

    python bench/mini_eval.py [--rows 16] [--rounds 2] [--arm sft|baseline]
        [--setting min=64,batch=32 --setting min=32,batch=32 --setting min=32,batch=64]

Runs `inference.py`'s code path (the `example.sh mini` evaluation: 4 samples per problem; arm
`sft`: agent on, `mini` template, the shipped adapter, 2 steps; arm `baseline`: no tool, no
adapter) on the first `--rows` problems of `deep_math/data/mini_test.jsonl` once per setting,
in turn for `--rounds` rounds (alternating order) in one process, and prints samples/s per
setting and its ratio to the first. A setting is `min=`: `PrefixCache.MIN_TOKENS`, the shortest
prompt prefix a batch shares through the cache (the mini prompt's problems share 43 tokens:
below that they are prefilled once per row, at or above once per batch, and queued rows may join
a running batch), and `batch=`: `model.max_batch_size`. Sampling is seeded per sample, so every
setting must generate the same texts; the bench prints how many samples differ from the first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from deep_math.config_utils import to_schema
from deep_math.engines.transformers.prefix_cache import PrefixCache
from deep_math.inference.config import LEGACY_KEYS, InferenceConfig
from deep_math.inference.run import run_inference

ROOT = Path(__file__).resolve().parent.parent
ARMS = {
    "sft": [
        "+model.math_agent=true",
        "+model.template=mini",
        "+model.examples=null",
        "+model.max_steps=2",
        "+model.max_agent_output=128",
    ],
    "baseline": ["+model.math_agent=false", "+model.max_agent_output=192"],
}


def run(rows: int, arm: str, batch: int, out: Path) -> float:
    overrides = [
        "hf_tag=deep_math/data/mini_test.jsonl",
        f"limit={rows}",
        "model.sampling=4",
        "model.generation.max_new_tokens=192",
        "overwrite=true",
        f"+model.max_batch_size={batch}",
        f"generated_file={out}",
        *ARMS[arm],
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = to_schema(compose(config_name="inference", overrides=overrides), InferenceConfig, LEGACY_KEYS)
    t0 = time.perf_counter()
    summary = run_inference(cfg)
    return summary.samples / (time.perf_counter() - t0)


def texts(path: Path) -> dict[str, list[str]]:
    """id -> the problem's sampled texts (records are written in completion order)."""
    records = (json.loads(line) for line in path.read_text().splitlines())
    return {r["id"]: r["text"] for r in records}


def parse(setting: str) -> tuple[int, int]:
    fields = dict(part.split("=") for part in setting.split(","))
    return int(fields["min"]), int(fields["batch"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--arm", choices=sorted(ARMS), default="sft")
    parser.add_argument("--setting", action="append")
    args = parser.parse_args()
    settings = args.setting or ["min=64,batch=32", "min=32,batch=32", "min=32,batch=64"]
    rates: dict[str, list[float]] = {s: [] for s in settings}
    tmp = Path(tempfile.mkdtemp())
    files = {s: tmp / f"{i}.jsonl" for i, s in enumerate(settings)}
    for r in range(args.rounds):
        for s in settings if r % 2 == 0 else settings[::-1]:
            PrefixCache.MIN_TOKENS, batch = parse(s)
            rates[s].append(run(args.rows, args.arm, batch, files[s]))
            print(f"round {r} {s}: {rates[s][-1]:.3f} samples/s", flush=True)
    first = settings[0]
    mean = {s: sum(v) / len(v) for s, v in rates.items()}
    reference = texts(files[first])
    for s in settings:
        other = texts(files[s])
        pairs = [(x, y) for i in reference for x, y in zip(reference[i], other[i], strict=True)]
        differ = sum(x != y for x, y in pairs)
        print(
            f"arm {args.arm} {s}: {mean[s]:.3f} samples/s (runs {', '.join(f'{x:.3f}' for x in rates[s])}), "
            f"{mean[s] / mean[first]:.2f}x {first}; samples differing from it: {differ} of {len(pairs)}"
        )


if __name__ == "__main__":
    main()
