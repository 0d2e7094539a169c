"""Retrieval-augmented report generation: index the training reports, retrieve for each test image, write.

Usage::

    python -m eclip_monai.rag.generate --config configs/report_generation.json [more configs ...] \\
        --checkpoint [NAME=]PATH [--checkpoint NAME=PATH ...] --out DIR [--resume] [--KEY#SUBKEY VALUE ...]

For each checkpoint: build or reuse the report index over ``index_splits`` (in ``index_dir``, default
``<out>/index``), embed the ``query_splits`` images, retrieve, generate, and write ``generated.jsonl`` (one
record per image, appended as it is produced), ``generated.csv`` (dicom_id, study_id, reference, generated,
retrieved_ids) and ``metrics.json``. Several checkpoints write to ``DIR/NAME/`` each, plus ``DIR/summary.csv``
comparing them. ``--resume`` keeps the records already in ``generated.jsonl`` and generates only the rest.

Config keys (MONAI bundle syntax: later ``--config`` files and ``--a#b value`` overrides win):

- ``dataset_dir`` / ``mimic_root``: the MIMIC-CXR layout read (default: the phantom data, ``data/phantom``).
- ``report_sections``: report sections used as text (FINDINGS + IMPRESSION).
- ``index_splits`` / ``query_splits``: splits indexed and generated for; ``max_queries``: first N images only.
- ``model_name``, ``image_size``, ``hf_model_name``: the eCLIP towers the checkpoint was trained with (the
  keys of ``bundle/configs/train.json``, so ``configs/tiny_cpu.json`` can be layered on top).
- ``checkpoint``: used when no ``--checkpoint`` is given; null runs the untrained network (smoke tests).
- ``index_dir``, ``device`` (``"auto"``: CUDA when available), ``batch_size``, ``num_workers``, ``seed``.
- ``retrieval``: ``k`` reports per image; ``diverse`` picks them by k-means over the top ``candidates``.
- ``prompt``: ``few_shot`` example reports drawn from the index, ``max_chars`` / ``max_tokens`` budget (for
  the ``hf`` back-end ``max_tokens`` defaults to the model's context minus ``max_new_tokens``),
  ``instruction`` (null: ``rag.prompt.DEFAULT_INSTRUCTION``).
- ``llm``: ``{"backend": "retrieval" | "random" | "hf" | "openai", ...}`` plus the back-end's arguments
  (see ``eclip_monai.rag.llm``).
- ``metrics``: ``embedding_model_dir`` (a local sentence encoder; null skips that score),
  ``uncertain_as_positive``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from monai.bundle import ConfigParser
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
from eclip_monai.transforms import build_tokenizer

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "report_generation.json"
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
                                      corpus, checkpoint, ids, batch_size, device)
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


def load_config(files: Sequence[str | os.PathLike], overrides: Mapping[str, object] | None = None) -> dict:
    """Merge config files (later wins), apply ``{"a#b": value}`` overrides, resolve ``@`` and ``$``."""
    parser = ConfigParser()
    parser.read_config([os.fspath(f) for f in files])
    parser.update(dict(overrides or {}))
    return {key: parser.get_parsed_content(key) for key in parser.get() if key not in ("imports", "_meta_")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Further --KEY VALUE pairs override config keys (nested keys joined by '#', values parsed as "
               "JSON when possible), e.g. --llm#backend hf --llm#model_dir /models/llm")
    parser.add_argument("--config", nargs="+", default=[DEFAULT_CONFIG], help="config files, later ones win")
    parser.add_argument("--checkpoint", action="append", default=[], help="[NAME=]PATH, repeatable")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="keep generated.jsonl, generate the rest")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, _overrides(extra))
    checkpoints = [_named(c) for c in args.checkpoint] or [("run", config.get("checkpoint"))]
    if len({name for name, _ in checkpoints}) < len(checkpoints):
        raise SystemExit("several checkpoints need distinct names: --checkpoint eclip=A.pt --checkpoint "
                         "clip=B.pt")
    summary = []
    for name, path in checkpoints:
        out = Path(args.out) / name if len(checkpoints) > 1 else Path(args.out)
        metrics = run(config, out, path, resume=args.resume)
        summary.append({"name": name, **{k: metrics[k] for k in SUMMARY_COLUMNS}})
        print(json.dumps({"out": str(out), **summary[-1]}))
    if len(checkpoints) > 1:
        pd.DataFrame(summary).to_csv(Path(args.out) / "summary.csv", index=False)
    return 0


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
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (Path(spec).stem, spec)


def _overrides(extra: Sequence[str]) -> dict[str, object]:
    if len(extra) % 2 or any(not k.startswith("--") for k in extra[::2]):
        raise SystemExit(f"overrides must be --KEY VALUE pairs, found {list(extra)}")
    pairs: dict[str, object] = {}
    for key, value in zip(extra[::2], extra[1::2]):
        try:
            pairs[key[2:]] = json.loads(value)
        except json.JSONDecodeError:
            pairs[key[2:]] = value
    return pairs


if __name__ == "__main__":
    raise SystemExit(main())
