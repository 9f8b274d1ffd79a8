"""A scripted policy for tests: a deterministic fake engine that emits known steps.

It stands in for a model only where the logic under test is not the model's
(search bookkeeping, evaluation arithmetic). `script(prompt)` returns the
candidate next steps for a trajectory; they are handed out in order, cycling
when more samples are asked for than the script has.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from rstar_math.models.engine import Completion, SamplingParams


def code(body: str) -> str:
    return f"<code>\n{body}\n<end_of_step>"


def answer(value: str) -> str:
    return f"<answer>The answer is \\boxed{{{value}}}<end_of_answer>"


def last_output(prompt: str) -> str | None:
    outputs = re.findall(r"<output>(.*?)<end_of_output>", prompt, flags=re.S)
    return outputs[-1] if outputs else None


class ScriptedEngine:
    def __init__(self, script: Callable[[str], Sequence[str]]):
        self.script = script
        self.calls: list[tuple[list[str], SamplingParams]] = []

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((list(prompts), params))
        out = []
        for prompt in prompts:
            steps = list(self.script(prompt))
            picks = [steps[i % len(steps)] for i in range(params.n)]
            out.append([Completion(text, len(text.split()), "stop") for text in picks])
        return out
