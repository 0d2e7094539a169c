"""The transformers back-end on a tiny random causal LM built offline, and the prompt it is given."""

from __future__ import annotations

import pytest
import torch

from eclip_monai.rag import HFCausalLM, LLMBackendError, PromptBuilder, render_prompt

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "FINDINGS : the heart is enlarged . there is a small left pleural effusion .",
    "IMPRESSION : no pneumothorax . no focal consolidation . mild pulmonary edema .",
    "Reports of the most similar chest X-rays : Write the report for the current chest X-ray .",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def save_tiny_llm(directory, chat_template: str | None = CHAT_TEMPLATE, positions: int = 256) -> str:
    """A word-level tokenizer trained on a few sentences and a 1-layer GPT-2 with random weights, saved like a
    downloaded model (``save_pretrained``) so the back-end loads it the way it loads a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]",
                                        pad_token="[PAD]")
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=32, n_layer=1, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # zero logits for [PAD]/[UNK]/[EOS] (tied embeddings): random words win
        model.transformer.wte.weight[:3] = 0
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


MESSAGES = PromptBuilder(max_chars=None)(["the heart is enlarged .", "no pneumothorax ."])


def test_generates_text_with_a_frozen_model(llm_dir):
    llm = HFCausalLM(llm_dir, max_new_tokens=12, device="cpu")
    text = llm.generate(MESSAGES)
    assert isinstance(text, str) and text
    assert not llm.model.training
    assert all(not p.requires_grad for p in llm.model.parameters())
    before = [p.clone() for p in llm.model.parameters()]
    llm.generate(MESSAGES)
    assert all(torch.equal(a, b) for a, b in zip(before, llm.model.parameters()))


def test_same_seed_gives_the_same_sampled_text(llm_dir):
    def sample(seed):
        llm = HFCausalLM(llm_dir, max_new_tokens=20, do_sample=True, temperature=1.0, top_p=1.0, device="cpu",
                         seed=seed)
        return llm.generate(MESSAGES)

    first = sample(0)
    assert sample(0) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))  # sampling really depends on the seed


def test_prompt_uses_the_chat_template_with_the_assistant_turn_opened(llm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    prompt = render_prompt(MESSAGES, tokenizer)
    assert prompt.startswith("<|system|> You are an expert radiologist")
    assert "[1] the heart is enlarged ." in prompt and prompt.endswith("<|assistant|>")


def test_templates_that_reject_a_system_role_get_it_merged_into_the_user_turn(llm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}"
                               "{{ raise_exception('no system role') }}{% endif %}" + CHAT_TEMPLATE)
    prompt = render_prompt(MESSAGES, tokenizer)
    assert prompt.startswith("<|user|> You are an expert radiologist") and "<|system|>" not in prompt


def test_without_a_chat_template_the_plain_layout_is_used(tmp_path):
    llm = HFCausalLM(save_tiny_llm(tmp_path, chat_template=None), max_new_tokens=5, device="cpu")
    prompt = render_prompt(MESSAGES, llm.tokenizer)
    assert prompt.startswith("You are an expert radiologist") and prompt.endswith("REPORT:\n")
    assert isinstance(llm.generate(MESSAGES), str)


def test_a_prompt_longer_than_the_context_is_refused_with_the_fix(tmp_path):
    llm = HFCausalLM(save_tiny_llm(tmp_path, positions=32), max_new_tokens=8, device="cpu")
    with pytest.raises(LLMBackendError, match="exceeds the model's context of 32"):
        llm.generate(MESSAGES)


def test_token_budget_counts_with_the_llm_tokenizer(llm_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    snippets = ["the heart is enlarged . " * 20, "no pneumothorax ."]
    messages = PromptBuilder(max_chars=None, max_tokens=150, tokenizer=tokenizer)(snippets)
    used = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)
    assert used <= 150 and messages[1]["content"].count("[1]") == 1 and "[2]" not in messages[1]["content"]


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(LLMBackendError, match="config.json"):
        HFCausalLM(tmp_path)
