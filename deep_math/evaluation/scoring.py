"""Per-problem results: graded samples, equivalence groups and majority votes.

Answers are grouped by mathematical equivalence, not by string: every correct answer is in one
group (each equals the gold), and the wrong answers of a problem are grouped among themselves
with `grading.group_answers` (math-verify in both directions). Samples without an answer do not
vote. The majority is the largest group; a tie goes to the group that appeared first among the
samples (deterministic), and ties are counted so a report can show how much they matter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from deep_math.evaluation.grading import OK, Grade
from deep_math.evaluation.records import GeneratedProblem, Sample


@dataclass(frozen=True)
class Vote:
    answer: str | None
    correct: bool
    tie: bool  # several groups shared the top count
    tie_with_correct: bool  # ... and one of them was correct (another tie rule could change the score)


@dataclass
class ProblemResult:
    problem: GeneratedProblem
    grades: list[Grade]
    groups: list[int | None]  # equivalence-group id per sample, None for no answer

    @property
    def samples(self) -> list[Sample]:
        return self.problem.samples

    @property
    def correct(self) -> list[bool]:
        return [g.correct for g in self.grades]

    @property
    def answers(self) -> list[str | None]:
        return [g.answer for g in self.grades]

    def majority(self, k: int | None = None) -> Vote:
        """The majority vote over the first k samples (all when k is None)."""
        groups = self.groups[:k] if k else self.groups
        counts = Counter(g for g in groups if g is not None)
        if not counts:
            return Vote(None, False, False, False)
        top = max(counts.values())
        leaders = [g for g in dict.fromkeys(groups) if g is not None and counts[g] == top]
        first = groups.index(leaders[0])
        correct_groups = {self.groups[i] for i, c in enumerate(self.correct) if c}
        tie = len(leaders) > 1
        return Vote(
            self.grades[first].answer,
            self.grades[first].correct,
            tie,
            tie and any(g in correct_groups for g in leaders),
        )


def wrong_answers_to_group(grades: list[Grade]) -> list[str]:
    """Distinct wrong answers of one problem, in order of appearance (what needs math-verify)."""
    return list(dict.fromkeys(g.answer for g in grades if g.answer is not None and not g.correct))


def assign_groups(grades: list[Grade], wrong_groups: dict[str, int]) -> list[int | None]:
    """Group id per sample: correct answers share one group; wrong ones use `wrong_groups`
    (answer -> group among the wrong answers). Ids are renumbered by first appearance."""
    raw: list[tuple[str, int] | None] = []
    for g in grades:
        if g.answer is None:
            raw.append(None)
        elif g.correct:
            raw.append(("correct", 0))
        else:
            raw.append(("wrong", wrong_groups[g.answer]))
    ids: dict[tuple[str, int], int] = {}
    out: list[int | None] = []
    for key in raw:
        if key is None:
            out.append(None)
        else:
            out.append(ids.setdefault(key, len(ids)))
    return out


def grading_counts(results: list[ProblemResult]) -> dict[str, int]:
    counts = Counter(g.status for r in results for g in r.grades)
    return {status: counts.get(status, 0) for status in (OK, "no_answer", "timeout", "error")}
