"""Prompt templates of the training command, rendered into the tokenizer's chat template.

The default texts follow docs/paper.md: the search prompt asks for step-by-step reasoning and a final
answer in ``\\boxed{}``; the aggregation prompt shows the problem and the numbered candidates and
asks the model to check them, keep what is right and write one self-consistent final solution.
Placeholders are replaced in one pass (``{problem}``, ``{candidates}``, ``{index}``, ``{solution}``),
so braces in a problem's LaTeX or a placeholder-like text inside a candidate are left alone.
"""

from __future__ import annotations

import re

SEARCH = "Solve the following problem. Reason step by step, and put your final answer within \\boxed{}.\n\n{problem}"
AGGREGATION = (
    "Here is a problem and several candidate solutions, which may contain mistakes.\n\n"
    "Problem:\n{problem}\n\nCandidate solutions:\n{candidates}\n"
    "Check each candidate for errors, keep what is right, and write one self-consistent final "
    "solution. Reason step by step, and put your final answer within \\boxed{}."
)
CANDIDATE = "Candidate {index}:\n{solution}\n"
DEFAULTS = {"search": SEARCH, "aggregation": AGGREGATION, "candidate": CANDIDATE}
PLACEHOLDERS = {"search": ("problem",), "aggregation": ("problem", "candidates"), "candidate": ("index", "solution")}


def fill(template: str, **values) -> str:
    """``template`` with each ``{name}`` of ``values`` replaced, in one pass."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), template)


def check_templates(prompts) -> None:
    """ValueError naming the key when a template lacks one of its placeholders."""
    for key, names in PLACEHOLDERS.items():
        text = getattr(prompts, key)
        for name in names:
            if "{" + name + "}" not in text:
                raise ValueError(f"config key prompts.{key} must contain {{{name}}}, got {text!r}")


class Prompts:
    """Renders the two roles' prompts as token ids through ``tokenizer``'s chat template.

    search(problem) -> ids of the chat-formatted search prompt (one user turn, generation prompt on);
    template(x_ids, traces) -> the aggregation prompt of problem x (the ``rollout`` / RSA template):
    the problem's text is looked up from its prompt ids, the candidates are the decoded traces.
    """

    def __init__(self, tokenizer, search: str, aggregation: str, candidate: str):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer of model.path has no chat template")
        self.tokenizer = tokenizer
        self.texts = {"search": search, "aggregation": aggregation, "candidate": candidate}
        self._problem_of: dict[tuple, str] = {}

    def chat(self, text: str) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def search(self, problem: str) -> list[int]:
        ids = self.chat(fill(self.texts["search"], problem=problem))
        self._problem_of[tuple(ids)] = problem
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def template(self, x_ids, traces) -> list[int]:
        problem = self._problem_of[tuple(x_ids)]
        candidates = "".join(
            fill(self.texts["candidate"], index=i + 1, solution=self.decode(t)) for i, t in enumerate(traces)
        )
        return self.chat(fill(self.texts["aggregation"], problem=problem, candidates=candidates))
