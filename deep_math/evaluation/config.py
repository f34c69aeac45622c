"""Schema of configs/evaluation.yaml (validated after Hydra composes it) and the metric builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deep_math.config_utils import ConfigError, unknown_name_error


def _default_metrics() -> list[dict[str, Any]]:
    return [
        {"_target_": "deep_math.evaluation.metrics.MajorityAtK"},
        {"_target_": "deep_math.evaluation.metrics.MeanAtK"},
        {"_target_": "deep_math.evaluation.metrics.PassAtK"},
        {"_target_": "deep_math.evaluation.metrics.NoAnswerRate"},
        {"_target_": "deep_math.evaluation.metrics.TruncationRate"},
        {"_target_": "deep_math.evaluation.metrics.OutputLength"},
        {"_target_": "deep_math.evaluation.metrics.ToolUse"},
    ]


@dataclass
class BudgetConfig:
    """Accuracy against token budget (deep_math/evaluation/budget.py)."""

    # budgets of the table, in tokens (model + tool); empty: no budget report
    table: list[int] = field(default_factory=lambda: [1024, 2048, 5120, 10240, 20480, 32768])

    def __post_init__(self) -> None:
        self.table = [int(b) for b in self.table or []]
        if any(b < 1 for b in self.table):
            raise ValueError(f"budget.table ({self.table}) must hold positive token counts")
        self.table = sorted(set(self.table))


@dataclass
class ArmsConfig:
    """Paired comparison of runs / arms (deep_math/evaluation/arms.py)."""

    bootstrap: int = 10000  # resamples of the problems for each difference's interval
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ValueError(f"arms.bootstrap ({self.bootstrap}) must be >= 0 (0: no interval)")
        if not 0 < self.confidence < 1:
            raise ValueError(f"arms.confidence ({self.confidence}) must be in (0, 1)")


@dataclass
class EvaluationConfig:
    # one path, a comma-separated string of paths, or a list: several files are compared
    generated_file: str | list[str] | None = None
    # None: <stem>-results.yaml next to each generated file. A path ending in .yaml (one file
    # only) or a folder (several files) otherwise; <stem>-per-example.jsonl goes beside it.
    results_file: str | None = None
    # markdown comparison table (several files); the PNG plot gets the same stem.
    # None: comparison.md in the folder of the first file's results.
    comparison_file: str | None = None
    labels: list[str] | None = None  # run names in the table/plot; None: file stems
    limit: int | None = None  # first N problems of each file
    strict: bool = False  # a malformed line fails the run instead of being skipped and reported
    workers: int | None = None  # grading processes; None: all CPUs; 0: serial, in this process
    timeout: float = 5.0  # hard per-item grading limit in seconds (the worker is killed)
    batch_size: int = 32  # items per pool task
    tokenizer: str | None = None  # for samples without token counts; None: the embedded model's
    progress: bool = True
    plot: bool = True
    html: bool = True  # the trace viewer: <stem>-report.html (one file) or comparison.html (several)
    # samples per problem and run drawn in the viewer (the first N; null: all). Long traces make
    # big pages: 500 problems x 16 samples x 20k tokens would be several hundred MB of HTML.
    html_samples: int | None = 4
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    arms: ArmsConfig = field(default_factory=ArmsConfig)
    metrics: list[dict[str, Any]] = field(default_factory=_default_metrics)

    def __post_init__(self) -> None:
        self.generated_files = split_files(self.generated_file)
        if not self.generated_files:
            raise ValueError(
                "generated_file is required, e.g. generated_file=outputs/a.jsonl[,outputs/b.jsonl]"
            )
        if self.timeout <= 0:
            raise ValueError(f"timeout ({self.timeout}) must be > 0 seconds")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers ({self.workers}) must be >= 0 (0 = serial) or null (all CPUs)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit ({self.limit}) must be >= 1 or null")
        if self.labels is not None and len(self.labels) != len(self.generated_files):
            raise ValueError(
                f"labels has {len(self.labels)} names for {len(self.generated_files)} generated files"
            )
        if (
            self.results_file
            and str(self.results_file).endswith((".yaml", ".yml"))
            and len(self.generated_files) > 1
        ):
            raise ValueError("results_file must be a folder when several generated files are evaluated")
        if self.html_samples is not None and self.html_samples < 1:
            raise ValueError(f"html_samples ({self.html_samples}) must be >= 1 or null (all samples)")
        if not self.metrics:
            raise ValueError("metrics is empty: list at least one metric")


def split_files(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def build_metrics(entries: list[dict[str, Any]]) -> list[Any]:
    """Instantiate the configured metrics with Hydra; a wrong `_target_` lists the available ones."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from deep_math.evaluation.metrics import METRICS

    metrics = []
    for entry in entries:
        target = entry.get("_target_") if isinstance(entry, dict) else None
        if not target:
            raise ConfigError(
                f"each metric needs a _target_, e.g. deep_math.evaluation.metrics.MajorityAtK; got {entry!r}"
            )
        try:
            metrics.append(instantiate(entry))
        except InstantiationException as exc:
            name = str(target).rsplit(".", 1)[-1]
            if name not in METRICS:
                raise unknown_name_error("metric", name, list(METRICS)) from exc
            raise ConfigError(f"metric {target}: {exc}") from exc
    return metrics
