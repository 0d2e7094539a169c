"""Scores of generated radiology reports against reference reports. Every score lies in [0, 1].

- BLEU-2 / BLEU-4: sacrebleu's corpus BLEU with ``max_ngram_order`` 2 / 4 (13a tokenisation, lower-cased,
  no smoothing, as corpus BLEU is usually reported for report generation), divided by 100.
- ROUGE-L: mean F-measure of the longest common subsequence per pair (``rouge-score``, no stemming).
- Finding precision / recall / F1, micro (pooled over findings) and macro (mean over findings that occur in
  the references or the predictions): clinical correctness, which n-gram overlap misses ("no effusion" and
  "effusion" share most n-grams). Labels come from :class:`~eclip_monai.metrics.labeler.ReportLabeler`, for
  the references too unless true labels are given (e.g. the phantom's).
- Embedding similarity: mean cosine similarity of mean-pooled sentence embeddings from a local Hugging Face
  encoder directory (e.g. all-MiniLM-L6-v2), computed only when such a directory is given.

METEOR is left out: its common implementation (nltk) needs the WordNet corpus, which is not available offline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.metrics.labeler import CHEXPERT_CODING, POSITIVE, UNCERTAIN, ReportLabeler


def bleu(generated: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU over n-grams up to ``max_order``, in [0, 1]."""
    _check_pairs(generated, references)
    scorer = BLEU(max_ngram_order=max_order, lowercase=True, smooth_method="none")
    return scorer.corpus_score(list(generated), [list(references)]).score / 100.0


def rouge_l(generated: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over (generated, reference) pairs."""
    _check_pairs(generated, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(np.mean([scorer.score(r, g)["rougeL"].fmeasure for g, r in zip(generated, references)]))


def finding_scores(predicted: np.ndarray, target: np.ndarray, findings: Sequence[str]) -> dict:
    """Precision, recall and F1 of boolean (N, F) ``predicted`` against ``target``.

    Returns ``{"micro": {...}, "macro": {...}, "per_finding": {name: {..., "support"}}}``. A finding that is
    positive in neither array has no defined scores: it is reported as NaN and left out of the macro mean.
    """
    predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
    if predicted.shape != target.shape or predicted.shape[-1] != len(findings):
        raise ValueError(f"expected predicted and target of shape (N, {len(findings)}), found "
                         f"{predicted.shape} and {target.shape}")
    tp = (predicted & target).sum(0)
    fp = (predicted & ~target).sum(0)
    fn = (~predicted & target).sum(0)
    per = {name: {**_prf(tp[i], fp[i], fn[i]), "support": int(target[:, i].sum())}
           for i, name in enumerate(findings)}
    defined = [s for s in per.values() if not np.isnan(s["f1"])]
    macro = {m: float(np.mean([s[m] for s in defined])) if defined else float("nan")
             for m in ("precision", "recall", "f1")}
    return {"micro": _prf(tp.sum(), fp.sum(), fn.sum()), "macro": macro, "per_finding": per}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    if tp + fp + fn == 0:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def positive_labels(codes: np.ndarray, uncertain_as_positive: bool = True) -> np.ndarray:
    """Boolean positives from CheXpert-coded labels (1 / 0 / -1 / NaN); uncertain counts as asked."""
    codes = np.asarray(codes, np.float32)
    uncertain = uncertain_as_positive & (codes == CHEXPERT_CODING[UNCERTAIN])
    return (codes == CHEXPERT_CODING[POSITIVE]) | uncertain


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a local Hugging Face encoder directory."""

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 32,
                 max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"{model_dir}: expected a local Hugging Face encoder directory")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.max_length = torch.device(device), batch_size, max_length

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length, return_tensors="pt")
            batch = batch.to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            chunks.append(F.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0)

    def similarity(self, generated: Sequence[str], references: Sequence[str]) -> float:
        """Mean cosine similarity of each generated report to its reference."""
        _check_pairs(generated, references)
        return float((self(generated) * self(references)).sum(-1).mean())


def report_metrics(
    generated: Sequence[str],
    references: Sequence[str],
    *,
    findings: Sequence[str] = DEFAULT_FINDINGS,
    labeler: ReportLabeler | None = None,
    reference_labels: np.ndarray | None = None,
    uncertain_as_positive: bool = True,
    embedding_model_dir: str | os.PathLike | None = None,
) -> dict:
    """All scores of ``generated`` against ``references`` (same order) in one flat-ish dictionary.

    Args:
        findings: the findings scored (default: the phantom world's seven).
        labeler: labels the generated reports (and the references when ``reference_labels`` is None).
        reference_labels: (N, F) CheXpert-coded true labels in ``findings`` order, instead of labelling the
            reference text.
        uncertain_as_positive: whether an uncertain mention ("possible effusion") counts as a positive.
        embedding_model_dir: local encoder for ``embedding_similarity``; omitted from the result when None.
    """
    _check_pairs(generated, references)
    labeler = labeler or ReportLabeler()
    predicted = positive_labels(labeler.label_matrix(generated, findings), uncertain_as_positive)
    if reference_labels is None:
        reference_labels = labeler.label_matrix(references, findings)
    scores = finding_scores(predicted, positive_labels(reference_labels, uncertain_as_positive), findings)
    result = {
        "n": len(generated),
        "bleu2": bleu(generated, references, 2),
        "bleu4": bleu(generated, references, 4),
        "rougeL": rouge_l(generated, references),
        **{f"finding_{avg}_{m}": v for avg in ("micro", "macro") for m, v in scores[avg].items()},
        "per_finding": scores["per_finding"],
    }
    if embedding_model_dir is not None:
        embedder = SentenceEmbedder(embedding_model_dir)
        result["embedding_similarity"] = embedder.similarity(generated, references)
    return result


def _check_pairs(generated: Sequence[str], references: Sequence[str]) -> None:
    if len(generated) != len(references) or not generated:
        raise ValueError(f"expected as many generated reports as references (at least one), found "
                         f"{len(generated)} and {len(references)}")
