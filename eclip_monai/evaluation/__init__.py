"""Evaluation of a trained network: embed the evaluation sets, run every metric, write tables and figures."""

from eclip_monai.evaluation.embed import (
    Embeddings,
    embed_dataset,
    embed_texts,
    eval_image_transforms,
    prompt_class_embeddings,
)
from eclip_monai.evaluation.figures import plot_class_similarity, plot_modality_gap, plot_retrieval_gallery
from eclip_monai.evaluation.run import run_evaluation, write_results
from eclip_monai.evaluation.tasks import ClassificationTask, EvalContext, RetrievalTask

__all__ = [
    "ClassificationTask",
    "EvalContext",
    "RetrievalTask",
    "Embeddings",
    "embed_dataset",
    "embed_texts",
    "eval_image_transforms",
    "plot_class_similarity",
    "plot_modality_gap",
    "plot_retrieval_gallery",
    "prompt_class_embeddings",
    "run_evaluation",
    "write_results",
]
