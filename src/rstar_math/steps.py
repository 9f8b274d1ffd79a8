"""The step format: how a solution is written, parsed, executed and rendered.

One format is shared by generation, search, training and evaluation. A solution
is a question followed by steps. A code step is a thought written as Python
comments plus code; after the policy writes it, the trajectory's cumulative code
runs in the sandbox and what this step printed is appended as an output block.
The final step states the answer in \\boxed{}:

    <question>
    How many multiples of 3 are below 100?
    <end_of_question>
    <code>
    # Step 1: count the multiples of 3 below 100
    count = len(range(3, 100, 3))
    print(count)
    <end_of_step>
    <output>33<end_of_output>
    <answer>There are \\boxed{33} multiples.<end_of_answer>

Rules that every stage relies on:
  - The policy writes only `<code>...<end_of_step>` and `<answer>...<end_of_answer>`;
    generation stops at those end markers. Output blocks always come from executing
    the code, never from the model, and carry no training loss.
  - Cumulative code: a step's program is the code of every earlier step on its path
    that ran cleanly, then its own code. Earlier steps run silently; the output block
    holds only what the new step printed. Failed steps' code is left out, so a step
    that fixes an error is not re-broken by it.
  - A code step that raises, times out or prints nothing is an error step; its output
    block carries the error (e.g. `NameError: name 'x' is not defined`) so the next
    step can react to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from rstar_math.grading import extract_boxed

QUESTION_START, QUESTION_END = "<question>", "<end_of_question>"
CODE_START, STEP_END = "<code>", "<end_of_step>"
OUTPUT_START, OUTPUT_END = "<output>", "<end_of_output>"
ANSWER_START, ANSWER_END = "<answer>", "<end_of_answer>"

MARKERS = (QUESTION_START, QUESTION_END, CODE_START, STEP_END, OUTPUT_START, OUTPUT_END, ANSWER_START, ANSWER_END)
STOP_STRINGS = (STEP_END, ANSWER_END)
"""Generation of one step stops at the first of these (the marker is kept in the step text)."""


class StepKind(str, Enum):
    CODE = "code"
    ANSWER = "answer"
    INVALID = "invalid"  # neither form: truncated, empty, or the model tried to write an output block


@dataclass(frozen=True)
class Step:
    """One parsed policy step."""

    kind: StepKind
    text: str  # normalised text as it enters the trajectory, end marker included
    code: str = ""  # CODE steps: the Python between the markers
    answer_text: str = ""  # ANSWER steps: the prose between the markers

    @property
    def answer(self) -> str | None:
        """The boxed final answer of a well-formed ANSWER step; None for any other step, however
        boxed (search, sampling and verify all grade this)."""
        return extract_boxed(self.answer_text) if self.kind is StepKind.ANSWER else None


def render_prompt(question: str) -> str:
    """What the policy is conditioned on before its first step."""
    return f"{QUESTION_START}\n{question.strip()}\n{QUESTION_END}\n"


def parse_step(generated: str) -> Step:
    """Parse one generated step (the engine's completion, stop marker included or not)."""
    text = generated.strip("\n")
    if OUTPUT_START in text or OUTPUT_END in text:
        return Step(StepKind.INVALID, text)
    if text.startswith(CODE_START) and text.endswith(STEP_END):
        code = text[len(CODE_START) : -len(STEP_END)].strip("\n")
        if not code.strip() or CODE_START in code or ANSWER_START in code:
            return Step(StepKind.INVALID, text)
        return Step(StepKind.CODE, f"{CODE_START}\n{code}\n{STEP_END}", code=code)
    if text.startswith(ANSWER_START) and text.endswith(ANSWER_END):
        body = text[len(ANSWER_START) : -len(ANSWER_END)].strip()
        if CODE_START in body or ANSWER_START in body:
            return Step(StepKind.INVALID, text)
        return Step(StepKind.ANSWER, f"{ANSWER_START}{body}{ANSWER_END}", answer_text=body)
    return Step(StepKind.INVALID, text)


def render_output(output: str) -> str:
    return f"{OUTPUT_START}{output}{OUTPUT_END}\n"


def render_step(step_text: str, output: str | None) -> str:
    """A step as it appears inside a trajectory: its text, then its output block (code steps)."""
    if output is None:
        return f"{step_text}\n"
    return f"{step_text}\n{render_output(output)}"


def render_trajectory(question: str, steps: list[tuple[str, str | None]]) -> str:
    """Prompt plus (step text, output or None) pairs, exactly as the policy sees it."""
    return render_prompt(question) + "".join(render_step(t, o) for t, o in steps)


def split_prompt(trajectory: str) -> tuple[str, str]:
    """A rendered trajectory as (its prompt, exactly as render_prompt wrote it; the completion)."""
    cut = trajectory.index(QUESTION_END) + len(QUESTION_END) + 1
    return trajectory[:cut], trajectory[cut:]


def trainable_spans(completion: str) -> list[tuple[int, int, bool]]:
    """Split a rendered completion into (start, end, trainable) character spans.

    Output blocks, `<output>` through `<end_of_output>` and the newline after it,
    are not trainable: the executor writes them, the policy must not learn to.
    """
    spans: list[tuple[int, int, bool]] = []
    pos = 0
    while (start := completion.find(OUTPUT_START, pos)) != -1:
        end = completion.find(OUTPUT_END, start)
        end = len(completion) if end == -1 else end + len(OUTPUT_END)
        if end < len(completion) and completion[end] == "\n":
            end += 1
        if start > pos:
            spans.append((pos, start, True))
        spans.append((start, end, False))
        pos = end
    if pos < len(completion):
        spans.append((pos, len(completion), True))
    return spans
