"""Evaluation: answer extraction, math-verify grading in a process pool, maj@k / pass@k / lengths /
tool statistics, comparison tables and plots. Entry point: evaluation.py (configs/evaluation.yaml).

Modules: `extract` (final answer of a trace), `normalize` + `grading` (is it correct), `pool`
(process pool with hard per-item timeouts), `records` (reading generated files), `scoring`
(equivalence groups, majority vote), `lengths`, `metrics`, `numwords` (answers in words),
`arms` (three-arm comparison: flips, paired bootstrap), `budget` (accuracy against token
budget), `report` (files, tables, plots), `viewer` (static HTML trace viewer), `run` (the
pipeline), `config` (schema), `cli`.
"""
