"""Report writers ("back-ends"): a frozen local transformers LLM, an OpenAI-compatible server, or baselines.

Every back-end has ``generate(messages, neighbours) -> str``: ``messages`` is the chat prompt (see
``rag.prompt``) and ``neighbours`` the retrieved reports ranked by similarity. Choose one in the config with
``{"backend": name, ...}`` (the other keys are the class's arguments):

- ``"hf"`` → :class:`HFCausalLM`: a causal LM from a local directory, frozen, no download;
- ``"openai"`` → :class:`OpenAIChatBackend`: ``POST /v1/chat/completions`` as served by vLLM, llama.cpp's
  server, Ollama or any OpenAI-compatible endpoint, with timeout and bounded retry;
- ``"retrieval"`` → :class:`RetrievalOnlyBackend`: the nearest training report (the retrieval baseline);
- ``"random"`` → :class:`RandomReportBackend`: a random training report (the floor any method must beat).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch

from eclip_monai.rag.prompt import render_prompt
from eclip_monai.rag.retrieve import RetrievedReport

logger = logging.getLogger(__name__)
Messages = list[dict[str, str]]


class LLMBackendError(RuntimeError):
    """No report could be generated; the message names the server URL or model directory and the cause."""


class ReportBackend(Protocol):
    needs_prompt: bool  # False for baselines that ignore the messages

    def generate(self, messages: Messages, neighbours: Sequence[RetrievedReport]) -> str: ...


class HFCausalLM:
    """A Hugging Face causal LM loaded from ``model_dir`` only (``local_files_only``), frozen for inference.

    Args:
        model_dir: directory with ``config.json``, weights and tokenizer files (``save_pretrained`` layout).
        max_new_tokens: length limit of a generated report.
        temperature, top_p: sampling settings, used only with ``do_sample``.
        do_sample: sample (seeded) instead of greedy decoding.
        device: ``"cpu"``, ``"cuda"``, ... or ``"auto"`` (CUDA when available).
        dtype: ``"auto"`` (the checkpoint's own) or a torch dtype name such as ``"bfloat16"``.
        seed: ``torch.manual_seed`` before each generation, so a prompt always gives the same text.
    """

    needs_prompt = True

    def __init__(self, model_dir: str | os.PathLike, max_new_tokens: int = 256, temperature: float = 0.7,
                 top_p: float = 0.9, do_sample: bool = False, device: str = "auto", dtype: str = "auto",
                 seed: int | None = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(model_dir) / "config.json").is_file():
            raise LLMBackendError(f"{model_dir}: expected a local transformers model directory with "
                                  "config.json (models are never downloaded)")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
        self.model.to(self.device).eval().requires_grad_(False)
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.sampling = {"do_sample": do_sample}
        if do_sample:  # transformers warns about sampling settings under greedy decoding
            self.sampling.update(temperature=temperature, top_p=top_p)
        self.model_dir = os.fspath(model_dir)

    @property
    def context_length(self) -> int | None:
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def generate(self, messages: Messages, neighbours: Sequence[RetrievedReport] = ()) -> str:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        prompt = render_prompt(messages, self.tokenizer)
        # a chat template already holds the model's special tokens
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated).to(self.device)
        length = inputs["input_ids"].shape[1]
        if self.context_length and length + self.max_new_tokens > self.context_length:
            raise LLMBackendError(f"{self.model_dir}: prompt of {length} tokens + max_new_tokens "
                                  f"{self.max_new_tokens} exceeds the model's context of "
                                  f"{self.context_length}; lower prompt.max_tokens or max_new_tokens")
        if self.seed is not None:
            torch.manual_seed(self.seed)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, pad_token_id=pad,
                                         **self.sampling)
        return self.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip()


class OpenAIChatBackend:
    """The OpenAI chat-completions HTTP API over the standard library, for local or remote LLM servers.

    Connection errors, timeouts, HTTP 429 and 5xx are retried up to ``max_retries`` times, waiting
    ``backoff_s``, 2×, 4×, ... between attempts; other HTTP errors and malformed answers fail at once.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added when missing; a URL ending
            in ``/chat/completions`` is used as is).
        model: the model name the server expects.
        api_key: sent as a Bearer token; defaults to the ``OPENAI_API_KEY`` environment variable, if set.
        timeout_s: socket timeout of each attempt (connect and each read).
        max_retries, backoff_s: see above.
        max_tokens, temperature, top_p, seed: request fields (``seed`` only when not None).
        extra_params: further request fields passed through (e.g. ``{"stop": ["\\n\\n\\n"]}``).
    """

    needs_prompt = True

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0,
                 max_retries: int = 3, backoff_s: float = 1.0, max_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = 0,
                 extra_params: Mapping | None = None):
        url = base_url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        self.url, self.timeout_s, self.max_retries, self.backoff_s = url, timeout_s, max_retries, backoff_s
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.fields = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                       **({"seed": seed} if seed is not None else {}), **dict(extra_params or {})}

    def generate(self, messages: Messages, neighbours: Sequence[RetrievedReport] = ()) -> str:
        answer = self._post({**self.fields, "messages": messages})
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise LLMBackendError(f"{self.url}: malformed response; expected choices[0].message.content as "
                                  f"text, found {json.dumps(answer)[:300]}")
        return content.strip()

    def _post(self, body: dict) -> object:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        cause = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read(300).decode("utf-8", "replace")
                cause = f"HTTP {exc.code} {exc.reason}: {detail}"
                if exc.code != 429 and exc.code < 500:
                    raise LLMBackendError(f"{self.url}: {cause}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                cause = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            else:
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise LLMBackendError(f"{self.url}: malformed response; expected JSON, found "
                                          f"{raw[:200]!r}") from exc
            logger.warning("%s: attempt %d/%d failed (%s)", self.url, attempt + 1, self.max_retries + 1,
                           cause)
        raise LLMBackendError(f"{self.url}: no answer after {self.max_retries + 1} attempt(s); last error: "
                              f"{cause}")


class RetrievalOnlyBackend:
    """The nearest training report, verbatim: what retrieval alone achieves."""

    needs_prompt = False

    def generate(self, messages: Messages, neighbours: Sequence[RetrievedReport]) -> str:
        if not neighbours:
            raise ValueError("the retrieval baseline needs at least one retrieved report")
        return neighbours[0].text


class RandomReportBackend:
    """A training report drawn at random (seeded), ignoring the image: the floor for every other back-end."""

    needs_prompt = False

    def __init__(self, reports: Sequence[str], seed: int = 0):
        if not reports:
            raise ValueError("the random-report baseline needs a non-empty report corpus")
        self.reports, self.rng = list(reports), random.Random(seed)

    def generate(self, messages: Messages, neighbours: Sequence[RetrievedReport] = ()) -> str:
        return self.rng.choice(self.reports)


def build_backend(config: Mapping, corpus: Sequence[str] = ()) -> ReportBackend:
    """The back-end named by ``config["backend"]`` with the remaining keys as its arguments; ``corpus`` (the
    indexed reports) feeds the random baseline."""
    options = dict(config)
    name = options.pop("backend", None)
    if name == "hf":
        return HFCausalLM(**options)
    if name == "openai":
        return OpenAIChatBackend(**options)
    if name == "retrieval":
        return RetrievalOnlyBackend(**options)
    if name == "random":
        return RandomReportBackend(corpus, **options)
    raise ValueError(f"unknown LLM backend {name!r}; expected 'hf', 'openai', 'retrieval' or 'random'")
