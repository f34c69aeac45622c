"""GRPO training of the DeepMath agent (TRL GRPOTrainer; each completion is a full agent trace).

python training.py                                     # embedded SmolLM2, bundled problems, 2 CPU steps
python training.py --config-name training_paper        # the paper's settings (GPU)
accelerate launch --config_file configs/zero2.yaml training.py --config-name training_paper
"""

import logging

import hydra
from omegaconf import DictConfig

from deep_math.config_utils import ConfigError
from deep_math.training.config import load_training_config, refuse_bare_demo_on_gpu

log = logging.getLogger("training")


def _launch_facts() -> tuple[str, list[str], bool]:
    """(config name, command-line overrides, CUDA available) of this run."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return hydra_cfg.job.config_name, list(hydra_cfg.overrides.task), torch.cuda.is_available()


@hydra.main(config_path="configs", config_name="training", version_base=None)
def main(raw: DictConfig) -> None:
    try:
        refuse_bare_demo_on_gpu(*_launch_facts())
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
