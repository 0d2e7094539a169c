"""The whole evaluation of one network: the evaluation tasks (``tasks.py``, listed in ``evaluate.json``) run in
turn and their results written as ``metrics.json``, ``metrics.csv`` and figures.

Everything is deterministic for a given network and seed (ordered loading, seeded splits and subsets, exact
search), so evaluating one checkpoint twice gives identical files. The tables are written directly rather than
through MONAI's ``MetricsSaver``, which saves one engine's flat ``state.metrics``: here several sets and
tasks, with mean ± std per probe fraction, share one long table (dataset, task, metric, value).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from eclip_monai.evaluation.tasks import EvalContext
from eclip_monai.files import atomic_write

logger = logging.getLogger(__name__)


def run_evaluation(
    network: nn.Module,
    tokenizer,
    output_dir: str | os.PathLike,
    tasks: Sequence[Callable[[EvalContext], dict] | None],
    *,
    image_size: int = 224,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    figures: bool = True,
    progress: bool = True,
) -> dict:
    """Run every evaluation task (``tasks.ClassificationTask``, ``tasks.RetrievalTask``; None or a task
    without a ``root`` is skipped) on ``network``; return ``{task name: results}`` and write them under
    ``output_dir`` (``metrics.json``, ``metrics.csv``, ``figures/*.png``)."""
    output_dir = Path(output_dir)
    context = EvalContext(network, tokenizer, image_size, device, batch_size, num_workers, progress,
                          output_dir / "figures" if figures else None)
    results = {task.name: task(context) for task in tasks if task is not None and task.root is not None}
    if not results:
        raise ValueError("eval_tasks: no task has a root; expected at least one evaluation set to score")
    write_results(results, output_dir)
    return results


def _rows(results: Mapping[str, dict]):
    """(dataset, task, metric, value) for every number in the results (matrices stay in the JSON only)."""
    def walk(prefix: tuple[str, ...], value):
        if isinstance(value, Mapping):
            for key, child in value.items():
                yield from walk((*prefix, str(key)), child)
        elif isinstance(value, (int, float)):
            dataset, *rest = prefix
            task = rest[0] if len(rest) > 1 else ""
            yield dataset, task, "/".join(rest[1:] if len(rest) > 1 else rest), value

    for dataset, values in results.items():
        yield from walk((dataset,), values)


def write_results(results: Mapping[str, dict], output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``metrics.json`` (nested, as returned) and ``metrics.csv`` (one number per row), each atomically:
    a full disk or a read-only folder raises an ``OSError`` naming the file and leaves no partial file."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / "metrics.json", output_dir / "metrics.csv"
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(("dataset", "task", "metric", "value"))
    writer.writerows(_rows(results))
    text = json.dumps(results, indent=2) + "\n"
    atomic_write(json_path, lambda f: f.write(text.encode()), "evaluation results")
    atomic_write(csv_path, lambda f: f.write(table.getvalue().encode()), "evaluation results")
    logger.info("evaluation results written to %s and %s", json_path, csv_path)
    return json_path, csv_path
