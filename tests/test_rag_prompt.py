"""Prompt builder: chat messages with instruction, examples and ranked snippets inside a character budget."""

from __future__ import annotations

import pytest

from eclip_monai.rag import PromptBuilder, render_prompt
from eclip_monai.rag.prompt import TRUNCATION_MARK

SNIPPETS = ["Small left pleural effusion.", "Mild cardiomegaly.\n  No pneumothorax.", "Lungs are clear."]


def content_chars(messages) -> int:
    return sum(len(m["content"]) for m in messages)


def test_messages_hold_the_instruction_examples_and_ranked_snippets():
    messages = PromptBuilder(instruction="Be brief.", examples=["Example report one."])(SNIPPETS)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "Be brief."
    user = messages[1]["content"]
    assert "Example 1: Example report one." in user
    positions = [user.index(f"[{i}] {' '.join(s.split())}") for i, s in enumerate(SNIPPETS, 1)]
    assert positions == sorted(positions)  # best match first, whitespace normalised
    assert user.index("Example 1") < positions[0]


def test_snippets_are_cut_to_the_character_budget_best_first():
    long = ["word " * 200, "second report " * 50, "third report"]
    full = PromptBuilder(max_chars=None)(long)
    budget = content_chars(full) // 2
    messages = PromptBuilder(max_chars=budget)(long)
    user = messages[1]["content"]
    assert content_chars(messages) <= budget
    assert "[1] word word" in user and user.count(TRUNCATION_MARK.strip()) == 1
    assert "[2]" not in user and "[3]" not in user  # dropped once the budget is spent
    assert user.endswith("Write the report for the current chest X-ray.")


def test_a_budget_too_small_for_the_instruction_is_a_clear_error():
    with pytest.raises(ValueError, match="exceed the prompt budget"):
        PromptBuilder(examples=["x" * 500], max_chars=300)(SNIPPETS)


def test_plain_text_fallback_without_a_tokenizer():
    prompt = render_prompt(PromptBuilder(instruction="Be brief.")(SNIPPETS))
    assert prompt.startswith("Be brief.\n\n") and prompt.endswith("REPORT:\n")
