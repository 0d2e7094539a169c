"""Evaluation metrics over embeddings, as functions and as Ignite metrics (gathered across ranks under DDP):
retrieval recall, zero-shot classification with prompt ensembles (wording in ``eclip_monai.prompts``), linear
probes, embedding quality."""

from eclip_monai.metrics.classification import classification_metrics, macro_auroc
from eclip_monai.metrics.embedding_quality import (
    EmbeddingQuality,
    alignment,
    cosine_similarity_matrix,
    embedding_quality,
    modality_gap,
    uniformity,
)
from eclip_monai.metrics.gathered import GatheredMetric
from eclip_monai.metrics.gaze_attention import GazeAttention, similarity_saliency
from eclip_monai.metrics.linear_probe import linear_probe, subsample_indices
from eclip_monai.metrics.retrieval import (
    CrossModalRecall,
    chunked_topk,
    cross_modal_recall,
    faiss_topk,
    recall_at_k,
    report_group_id,
    topk_search,
    unique_by_group,
)
from eclip_monai.metrics.zero_shot import (
    zero_shot_classification,
    zero_shot_scores,
)

__all__ = [
    "CrossModalRecall",
    "EmbeddingQuality",
    "GatheredMetric",
    "GazeAttention",
    "alignment",
    "chunked_topk",
    "classification_metrics",
    "cosine_similarity_matrix",
    "cross_modal_recall",
    "embedding_quality",
    "faiss_topk",
    "linear_probe",
    "macro_auroc",
    "modality_gap",
    "recall_at_k",
    "report_group_id",
    "similarity_saliency",
    "subsample_indices",
    "topk_search",
    "uniformity",
    "unique_by_group",
    "zero_shot_classification",
    "zero_shot_scores",
]
