"""Score generated files and compare runs: python evaluation.py generated_file=a.jsonl[,b.jsonl,...]

See configs/evaluation.yaml; the pipeline lives in deep_math/evaluation/."""

import logging
import sys
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from deep_math.config_utils import to_schema
from deep_math.evaluation.cli import quote_list_overrides
from deep_math.evaluation.config import EvaluationConfig
from deep_math.evaluation.report import print_summary
from deep_math.evaluation.run import run_evaluation

log = logging.getLogger(__name__)

# the paper's config keys with no counterpart here
LEGACY = {
    "answer_processor": lambda value, data: None,
    "key_names": lambda value, data: None,
}


@hydra.main(config_path="configs", config_name="evaluation", version_base=None)
def main(cfg: DictConfig) -> None:
    config = to_schema(cfg, EvaluationConfig, LEGACY)
    # hydra.job.chdir may be true: resolve relative paths against the launch folder
    config.generated_files = [to_absolute_path(p) for p in config.generated_files]
    for key in ("results_file", "comparison_file"):
        if getattr(config, key):
            setattr(config, key, to_absolute_path(getattr(config, key)))
    runs = run_evaluation(config)
    print_summary(runs)
    for run in runs:
        extra = f", {run.outputs['budget_plot']}" if "budget_plot" in run.outputs else ""
        print(f"{run.label}: {run.outputs['results']}, {run.outputs['per_example']}{extra}")
    if len(runs) > 1:
        print(Path(runs[0].outputs["comparison"]).read_text(encoding="utf-8"))
        print(
            f"comparison: {runs[0].outputs['comparison']}"
            + (f", plot: {runs[0].outputs['plot']}" if "plot" in runs[0].outputs else "")
            + (
                f", budget: {runs[0].outputs['comparison_budget_plot']}"
                if "comparison_budget_plot" in runs[0].outputs
                else ""
            )
        )
    if "html" in runs[0].outputs:
        print(f"trace viewer: {runs[0].outputs['html']} (open it in a browser; no server needed)")


if __name__ == "__main__":
    sys.argv = quote_list_overrides(sys.argv)
    main()
