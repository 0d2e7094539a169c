"""Retrieval-augmented radiology report generation: a report index, retrieval by eCLIP image embeddings,
prompts, and LLM back-ends (local transformers, OpenAI-compatible servers, retrieval baselines)."""

from eclip_monai.rag.index import ReportIndex, embed_reports
from eclip_monai.rag.llm import (
    HFCausalLM,
    LLMBackendError,
    OpenAIChatBackend,
    RandomReportBackend,
    ReportBackend,
    RetrievalOnlyBackend,
    build_backend,
)
from eclip_monai.rag.prompt import DEFAULT_INSTRUCTION, PromptBuilder, render_prompt
from eclip_monai.rag.retrieve import ReportRetriever, Retrieval, RetrievedReport, embed_images, select_diverse

__all__ = [
    "DEFAULT_INSTRUCTION",
    "HFCausalLM",
    "LLMBackendError",
    "OpenAIChatBackend",
    "PromptBuilder",
    "RandomReportBackend",
    "ReportBackend",
    "ReportIndex",
    "ReportRetriever",
    "Retrieval",
    "RetrievalOnlyBackend",
    "RetrievedReport",
    "build_backend",
    "embed_images",
    "embed_reports",
    "render_prompt",
    "select_diverse",
]
