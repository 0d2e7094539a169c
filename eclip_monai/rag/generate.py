"""Retrieval-augmented report generation: index the training reports, retrieve for each test image, write.

A MONAI bundle workflow, ``bundle/configs/generate_reports.json``, merged after ``train.json`` (and the
overlays the checkpoint was trained with)::

    python -m monai.bundle run --config_file "['bundle/configs/train.json','configs/tiny_cpu.json',\
        'bundle/configs/generate_reports.json']" [--report_checkpoints "{'eclip': A, 'clip': B}"] [--llm#backend hf]

For each checkpoint: build or reuse the report index over ``index_splits`` (in ``index_dir``, default
``<out>/index``), embed the ``query_splits`` images, retrieve, generate, and write ``generated.jsonl`` (one
record per image, appended as it is produced), ``generated.csv`` (dicom_id, study_id, reference, generated,
retrieved_ids) and ``metrics.json``. Several checkpoints write to ``<out>/<name>/`` each, plus
``<out>/summary.csv`` comparing them; ``resume`` keeps the records already in ``generated.jsonl`` and generates
only the rest. The config keys are listed in ``docs/report_generation.md``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from eclip_monai.data import build_mimic_datalist
from eclip_monai.errors import CXRDataError
from eclip_monai.metrics.report_metrics import report_metrics
from eclip_monai.networks import build_eclip
from eclip_monai.networks.checkpoint import PROCESSOR, load_weights
from eclip_monai.rag.index import ReportIndex
from eclip_monai.rag.llm import HFCausalLM, ReportBackend, build_backend
from eclip_monai.rag.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from eclip_monai.rag.retrieve import ReportRetriever, embed_images
from eclip_monai.networks import build_tokenizer

logger = logging.getLogger(__name__)
CHAT_TEMPLATE_MARGIN = 64  # tokens a chat template may add around the message contents
SUMMARY_COLUMNS = ("bleu2", "bleu4", "rougeL", "finding_micro_f1", "finding_macro_f1", "n")
CSV_COLUMNS = ("dicom_id", "study_id", "reference", "generated", "retrieved_ids")


def report_corpus(items: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Distinct report texts (whitespace-normalised) with the study id of their first occurrence: one index
    row per text, so retrieval never spends its k slots on copies."""
    first: dict[str, str] = {}
    for item in items:
        first.setdefault(" ".join(item["report"].split()), str(item["study_id"]))
    return list(first), list(first.values())


def generate_reports(
    items: Sequence[dict],
    image_embeddings: torch.Tensor,
    retriever: ReportRetriever,
    backend: ReportBackend,
    prompt_builder: PromptBuilder | None,
    sink=None,
) -> list[dict]:
    """One record per item (``items[i]`` ↔ ``image_embeddings[i]``): reference, generated text, retrieved ids.

    Each record is also written to ``sink`` (a text file) as a JSON line the moment it exists, so an
    interrupted run keeps everything generated so far.
    """
    records = []
    progress = tqdm(zip(items, image_embeddings), total=len(items), desc="generating", unit="image")
    for item, embedding in progress:
        retrieval = retriever(embedding[None])[0]
        messages = prompt_builder([s.text for s in retrieval.snippets]) if backend.needs_prompt else []
        record = {
            "dicom_id": str(item["dicom_id"]),
            "study_id": str(item.get("study_id", "")),
            "reference": item["report"],
            "generated": backend.generate(messages, retrieval.ranked),
            "retrieved_ids": [s.id for s in retrieval.snippets],
            "retrieved_scores": [round(s.score, 6) for s in retrieval.snippets],
        }
        records.append(record)
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()
    return records


def build_network(config: Mapping, checkpoint: str | None, device: torch.device) -> tuple[nn.Module, object]:
    """The configured eCLIP towers (no heatmap processor) with ``checkpoint``'s weights, and the tokenizer."""
    network = build_eclip(model_name=config["model_name"], image_size=config["image_size"],
                          hf_model_name=config.get("hf_model_name"), experts=False)
    if checkpoint:
        load_weights(network, checkpoint, exclude=[PROCESSOR])  # retrieval needs only the towers
    else:
        logger.warning("no checkpoint: retrieving with an untrained network (useful only as a smoke test)")
    tokenizer = build_tokenizer(config["model_name"], hf_tokenizer_name=config.get("hf_model_name"))
    return network.to(device).eval(), tokenizer


def build_prompt_builder(prompt: Mapping, backend: ReportBackend, corpus: Sequence[str],
                         seed: int) -> PromptBuilder:
    """Few-shot examples drawn (seeded) from ``corpus``; a token budget from the LLM's context when local."""
    examples = random.Random(seed).sample(list(corpus), min(int(prompt.get("few_shot", 0)), len(corpus)))
    max_tokens, tokenizer = prompt.get("max_tokens"), None
    if isinstance(backend, HFCausalLM):
        tokenizer = backend.tokenizer
        if max_tokens is None and backend.context_length:
            max_tokens = backend.context_length - backend.max_new_tokens - CHAT_TEMPLATE_MARGIN
    return PromptBuilder(prompt.get("instruction") or DEFAULT_INSTRUCTION, examples, prompt.get("max_chars"),
                         max_tokens if tokenizer is not None else None, tokenizer)


def run(config: Mapping, out_dir: str | os.PathLike, checkpoint: str | None = None,
        resume: bool = False) -> dict:
    """Generate for one checkpoint into ``out_dir``; returns the metrics also written to ``metrics.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(config.get("device", "auto"))
    batch_size, seed = config.get("batch_size", 32), config.get("seed", 0)
    network, tokenizer = build_network(config, checkpoint, device)
    sections = config.get("report_sections", ("findings", "impression"))
    train = build_mimic_datalist(config["mimic_root"], splits=config["index_splits"], sections=sections)
    corpus, ids = report_corpus(train)
    if not corpus:
        raise CXRDataError(f"expected reports to index in splits {config['index_splits']}, found none",
                           path=config["mimic_root"])
    index = ReportIndex.load_or_build(config.get("index_dir") or out_dir / "index", network, tokenizer,
                                      corpus, checkpoint, ids, batch_size, device,
                                      **config.get("index_search", {}))
    llm = dict(config.get("llm", {"backend": "retrieval"}))
    backend = build_backend(llm, corpus=index.reports)  # before the image pass: a bad LLM setup fails fast
    builder = build_prompt_builder(config.get("prompt", {}), backend, index.reports, seed)
    retriever = ReportRetriever(index, seed=seed, **config.get("retrieval", {}))
    queries = build_mimic_datalist(config["mimic_root"], splits=config["query_splits"], sections=sections)
    queries = list(queries)[: config.get("max_queries") or None]

    jsonl = out_dir / "generated.jsonl"
    kept = _read_jsonl(jsonl) if resume else []
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")  # drops a cut-off line
    done = {r["dicom_id"] for r in kept}
    todo = {str(q["dicom_id"]): q for q in queries if str(q["dicom_id"]) not in done}
    embedded_ids, embeddings = embed_images(network, list(todo.values()), config["image_size"], batch_size,
                                            device, config.get("num_workers", 0))
    with open(jsonl, "a", encoding="utf-8") as sink:
        generate_reports([todo[i] for i in embedded_ids], embeddings, retriever, backend, builder, sink)

    records = _read_jsonl(jsonl)
    if not records:
        raise CXRDataError(f"no image of splits {config['query_splits']} could be read",
                           path=config["mimic_root"])
    table = pd.DataFrame(records)
    table["retrieved_ids"] = table["retrieved_ids"].map(";".join)
    table[list(CSV_COLUMNS)].to_csv(out_dir / "generated.csv", index=False)
    metrics = report_metrics(table["generated"].tolist(), table["reference"].tolist(),
                             **config.get("metrics", {}))
    metrics.update({
        "backend": llm.get("backend"),
        "checkpoint": checkpoint,
        "checkpoint_sha256": index.manifest["checkpoint_sha256"],  # of the weights when there is no file
        "index_size": len(index),
        "images_skipped": len(todo) - len(embedded_ids),
    })
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run_checkpoints(config: Mapping, out_dir: str | os.PathLike, checkpoints: Mapping[str, str | None],
                    resume: bool = False) -> list[dict]:
    """``run`` for each ``name -> checkpoint`` (None: untrained towers, a smoke test); with several, each into
    ``out_dir/name`` and a ``summary.csv`` of their scores side by side. Returns the summary rows."""
    if not checkpoints:
        raise ValueError("report_checkpoints: expected at least one name -> checkpoint")
    summary = []
    for name, path in checkpoints.items():
        out = Path(out_dir) / name if len(checkpoints) > 1 else Path(out_dir)
        metrics = run(config, out, None if path is None else os.fspath(path), resume=resume)
        summary.append({"name": name, **{k: metrics[k] for k in SUMMARY_COLUMNS}})
        logger.info("%s: %s", out, json.dumps(summary[-1]))
    if len(checkpoints) > 1:
        pd.DataFrame(summary).to_csv(Path(out_dir) / "summary.csv", index=False)
    return summary


def _read_jsonl(path: Path) -> list[dict]:
    """The records of a ``generated.jsonl``; a line cut off by a killed run is skipped with a warning."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [], 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping unreadable line %d (its image is generated again)", path, number)
    return records


def _device(device: str | torch.device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
