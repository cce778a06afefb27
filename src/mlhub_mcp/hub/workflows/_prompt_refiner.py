"""The evaluator and the optimizer of the prompt-template loop.

The evaluator scores an LLM execution's outputs against the labels by exact
match after lowercasing and collapsing whitespace. The optimizer refines the
template in two kinds of steps: it first states the label set the answer must
come from, then adds solved examples taken from rows answered wrongly. Rows
used as examples are left out of later scores, because their answer is in the
prompt.
"""

from dataclasses import dataclass, field
from typing import Any

# Above this many distinct labels the answers are treated as free text, and
# the label set is not listed in the prompt.
MAX_LISTED_LABELS = 20
MAX_EXAMPLE_CHARS = 2000


def normalize(value: Any) -> str:
    """Lowercase a value's text and collapse its whitespace."""
    return " ".join(str(value).split()).lower()


@dataclass
class Score:
    """The comparison of an execution's outputs with the labels."""

    evaluated: int = 0
    correct: int = 0
    failed: int = 0
    wrong_rows: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.evaluated if self.evaluated else None

    def metrics(self) -> dict[str, float]:
        values = {
            "evaluated_rows": float(self.evaluated),
            "correct_rows": float(self.correct),
            "failed_rows": float(self.failed),
        }
        if self.accuracy is not None:
            values["accuracy"] = self.accuracy
        return values


def score_outputs(rows: list[dict[str, Any]], exclude: set[int]) -> Score:
    """Score prediction rows (row, output, label) except those in ``exclude``.

    A row whose request failed has no output and counts as wrong.
    """
    score = Score()
    for row in rows:
        if row["row"] in exclude or row.get("label") is None:
            continue
        score.evaluated += 1
        output = row.get("output")
        if output is not None and normalize(output) == normalize(row["label"]):
            score.correct += 1
            continue
        if output is None:
            score.failed += 1
        score.wrong_rows.append(row["row"])
    return score


def _escape(text: str) -> str:
    # The template is a str.format template, so literal braces are doubled.
    return text.replace("{", "{{").replace("}", "}}")


class PromptRefiner:
    """Builds the template of each iteration from the starting one."""

    def __init__(self, base: str, examples_per_round: int) -> None:
        self.base = base
        self.examples_per_round = examples_per_round
        self.labels: list[str] = []
        self.constrained = False
        self.inputs: dict[int, str] = {}
        self.examples: list[tuple[int, str, str]] = []
        self.max_examples = 0

    @property
    def example_rows(self) -> set[int]:
        return {row for row, _, _ in self.examples}

    def template(self) -> str:
        parts = []
        if self.examples:
            solved = "\n\n".join(
                f"{_escape(text)}\nAnswer: {_escape(label)}" for _, text, label in self.examples
            )
            parts.append(f"Solved examples:\n\n{solved}\n\nNow answer this one:")
        parts.append(self.base)
        if self.constrained:
            choices = ", ".join(_escape(label) for label in self.labels)
            parts.append(
                f"Answer with exactly one of: {choices}. Reply with the answer only, "
                "without punctuation or explanation."
            )
        return "\n\n".join(parts)

    def refine(self, rows: list[dict[str, Any]], score: Score) -> str | None:
        """Change the template after an iteration; return what changed, or None if nothing can."""
        if not self.inputs:
            # The first iteration used the starting template, so its prompts
            # show each row's input the way the starting template words it.
            self.inputs = {
                r["row"]: str(r["prompt"])[:MAX_EXAMPLE_CHARS] for r in rows if r.get("prompt")
            }
            self.labels = sorted({str(r["label"]) for r in rows if r.get("label") is not None})
            self.max_examples = len(rows) // 2

        if not self.constrained and 2 <= len(self.labels) <= MAX_LISTED_LABELS:
            self.constrained = True
            return f"state that the answer is one of {self.labels}"

        used = self.example_rows
        room = self.max_examples - len(self.examples)
        candidates = [row for row in score.wrong_rows if row in self.inputs and row not in used]
        chosen = candidates[: max(0, min(self.examples_per_round, room))]
        if not chosen:
            return None

        labels = {r["row"]: str(r["label"]) for r in rows}
        self.examples += [(row, self.inputs[row], labels[row]) for row in chosen]
        return f"add rows {chosen} as solved examples; they are left out of later scores"
