"""Generate solutions with the DeepMath agent (or the plain model) and write a generated file.

    python inference.py                                   # embedded model, bundled problems
    python inference.py hf_tag=HuggingFaceH4/MATH-500 model.sampling=16 +model.use_vllm=true \
        model.model_name_or_path=Qwen/Qwen3-4B-Thinking-2507 generated_file=outputs/math500.jsonl
"""

import logging

import hydra
from omegaconf import DictConfig

from deep_math.config_utils import ConfigError, to_schema
from deep_math.inference.config import LEGACY_KEYS, InferenceConfig

log = logging.getLogger("inference")


@hydra.main(config_path="configs", config_name="inference", version_base=None)
def main(raw: DictConfig) -> None:
    try:
        cfg = to_schema(raw, InferenceConfig, LEGACY_KEYS)
    except ConfigError as exc:
        raise SystemExit(f"Config error: {exc}") from None

    from deep_math.inference.run import run_inference

    summary = run_inference(cfg)
    print(summary.line())


if __name__ == "__main__":
    main()
