"""GRPO training of the DeepMath agent (TRL GRPOTrainer; each completion is a full agent trace).

python training.py                                     # embedded SmolLM2, bundled problems, 2 CPU steps
python training.py --config-name training_paper        # the paper's settings (GPU)
accelerate launch --config_file configs/zero2.yaml training.py --config-name training_paper
"""

import logging

import hydra
from omegaconf import DictConfig

from deep_math.config_utils import ConfigError
from deep_math.training.config import load_training_config

log = logging.getLogger("training")


@hydra.main(config_path="configs", config_name="training", version_base=None)
def main(raw: DictConfig) -> None:
    try:
        cfg = load_training_config(raw)
    except ConfigError as exc:
        raise SystemExit(f"Config error: {exc}") from None

    from accelerate import PartialState

    from deep_math.training.builders import run_training

    out = run_training(cfg)
    if PartialState().is_main_process:  # once, not once per rank under accelerate launch
        print(f"Saved the trained model to {out} (load it with: python inference.py model.lora_path={out})")


if __name__ == "__main__":
    main()
