"""Evaluation: answer extraction, math-verify grading in a process pool, maj@k / pass@k / lengths /
tool statistics, comparison tables and plots. Entry point: evaluation.py (configs/evaluation.yaml).

Modules: `extract` (final answer of a trace), `normalize` + `grading` (is it correct), `pool`
(process pool with hard per-item timeouts), `records` (reading generated files), `scoring`
(equivalence groups, majority vote), `lengths`, `metrics`, `report` (files, tables, plot),
`run` (the pipeline), `config` (schema), `cli`.
"""
