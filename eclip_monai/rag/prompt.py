"""Chat prompts for report generation: instruction, example reports, retrieved reports, within a budget.

The frozen LLM never sees the image: it rewrites what the nearest training reports agree on, and the prompt
says so. A budget (characters, or tokens of the LLM's own tokenizer) keeps the prompt inside the model's
context: the instruction and examples are fixed, retrieved reports are added best first and the one that
crosses the budget is cut at a word boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = (
    "You are an expert radiologist writing the FINDINGS and IMPRESSION of a chest X-ray report. You "
    "cannot see the image. You are given reports of the most similar chest X-rays, retrieved by image "
    "similarity and ranked most similar first. Report the findings these reports agree on, include "
    "pertinent negatives, do not mention the retrieved reports, prior studies or comparisons, and answer "
    "with the report text only."
)
EXAMPLES_HEADER = "Example reports, for style only (they describe other patients):"
SNIPPETS_HEADER = "Reports of the most similar chest X-rays:"
REQUEST = "Write the report for the current chest X-ray."
TRUNCATION_MARK = " ..."


class PromptBuilder:
    """Retrieved report texts → chat messages ``[{"role": "system", ...}, {"role": "user", ...}]``.

    Args:
        instruction: the system message.
        examples: few-shot example reports (e.g. drawn from the training split), shown for style.
        max_chars: budget on the characters of all message contents; None for no character budget.
        max_tokens: budget in tokens of ``tokenizer`` (a Hugging Face tokenizer); None for none.
        tokenizer: counts tokens for ``max_tokens``.
    """

    def __init__(self, instruction: str = DEFAULT_INSTRUCTION, examples: Sequence[str] = (),
                 max_chars: int | None = 6000, max_tokens: int | None = None, tokenizer=None):
        if max_tokens is not None and tokenizer is None:
            raise ValueError("max_tokens needs the tokenizer that counts them")
        self.instruction, self.examples = instruction, list(examples)
        self.max_chars, self.max_tokens, self.tokenizer = max_chars, max_tokens, tokenizer

    def __call__(self, snippets: Sequence[str]) -> list[dict[str, str]]:
        head = ""
        if self.examples:
            shown = (f"Example {i}: {' '.join(e.split())}" for i, e in enumerate(self.examples, 1))
            head = "\n".join([EXAMPLES_HEADER, *shown]) + "\n\n"
        head += SNIPPETS_HEADER
        tail = f"\n\n{REQUEST}"
        if not self._fits(head + tail):
            raise ValueError(f"the instruction and {len(self.examples)} example report(s) alone exceed the "
                             f"prompt budget ({self.max_chars} chars / {self.max_tokens} tokens); use "
                             "fewer or shorter examples or a larger budget")
        body = head
        for rank, text in enumerate(snippets, 1):
            line = f"\n[{rank}] {' '.join(text.split())}"
            if self._fits(body + line + tail):
                body += line
                continue
            cut = self._longest_prefix(body, line, tail)
            if cut:
                body += cut + TRUNCATION_MARK
            elif rank == 1:
                logger.warning("no retrieved report fits the prompt budget; the LLM gets the instruction")
            break
        return [{"role": "system", "content": self.instruction}, {"role": "user", "content": body + tail}]

    def _fits(self, user: str) -> bool:
        text = self.instruction + user
        if self.max_chars is not None and len(text) > self.max_chars:
            return False
        return self.max_tokens is None or self._tokens(text) <= self.max_tokens

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _longest_prefix(self, body: str, line: str, tail: str) -> str:
        """The longest word prefix of ``line`` that fits with the truncation mark (binary search)."""
        words = line.split(" ")
        low, high, best = 2, len(words) - 1, ""  # at least "[rank] word"
        while low <= high:
            mid = (low + high) // 2
            candidate = " ".join(words[:mid])
            if self._fits(body + candidate + TRUNCATION_MARK + tail):
                best, low = candidate, mid + 1
            else:
                high = mid - 1
        return best


def render_prompt(messages: list[dict[str, str]], tokenizer=None) -> str:
    """One prompt string: the tokenizer's chat template (with the assistant turn opened) when it has one,
    else a plain-text layout. Templates that reject a system role get it merged into the user turn."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            rest = [dict(m) for m in messages if m["role"] != "system"]
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\nREPORT:\n"
