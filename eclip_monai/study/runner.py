"""Run every (arm, seed) of a protocol through the bundle's own workflows, resumably.

Each run is three ``python -m monai.bundle run`` processes over the same overlays: ``train.json`` (training),
``evaluate.json`` (zero-shot, linear probe, retrieval, embedding quality) and ``gaze_attention.json`` (where the
model looks), so a study measures exactly what a user's command would. A step whose output file exists is not
rerun, so a killed study continues where it stopped; a training without its final checkpoint starts over.
Arms share the seed, hence the towers' initialisation, the data order and the augmentation draws.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from eclip_monai.study.protocol import Protocol

logger = logging.getLogger(__name__)

__all__ = ["RunSpec", "plan_runs", "prepare", "run_all", "run_one"]

TRAIN_CONFIG = "bundle/configs/train.json"
EVALUATE_CONFIG = "bundle/configs/evaluate.json"
GAZE_CONFIG = "bundle/configs/gaze_attention.json"
TIMING_FILE = "timing.json"


@dataclass(frozen=True)
class RunSpec:
    arm: str
    seed: int
    overlays: tuple[str, ...]
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.run_dir / "eval" / "metrics.json"

    @property
    def gaze_file(self) -> Path:
        return self.run_dir / "eval" / "gaze_attention.json"


def plan_runs(protocol: Protocol, study_dir: str | os.PathLike, ablations: bool = False,
              seeds: Sequence[int] | None = None, arms: Sequence[str] | None = None) -> list[RunSpec]:
    """Seed-major order (every arm of seed 0, then of seed 1, ...), so a study stopped early still holds
    complete pairs."""
    arm_names = list(protocol.ablation_arms) if ablations else list(protocol.arms)
    arm_names = [a for a in arm_names if arms is None or a in arms]
    chosen = seeds if seeds is not None else (protocol.ablation_seeds if ablations else protocol.seeds)
    return [RunSpec(arm, seed, protocol.overlays(arm), Path(study_dir) / arm / f"seed{seed}")
            for seed in chosen for arm in arm_names]


def _bundle(configs: Sequence[str], run: RunSpec, study_dir: Path, overrides: dict, log: Path,
            threads: int | None = None) -> float:
    """One ``monai.bundle run``; its output goes to ``log``. Returns the wall time; raises on failure.
    ``threads`` sets the run's torch/OpenMP threads (one per run when runs share the cores)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(list(configs)),
               "--seed", str(run.seed), "--output_dir", str(run.run_dir), "--runs_dir", str(study_dir)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}))
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{run.arm} seed {run.seed}: `{' '.join(command)}` failed "
                           f"(exit {done.returncode}); its log is {log}")
    return time.perf_counter() - started


def run_one(protocol: Protocol, run: RunSpec, study_dir: str | os.PathLike, overrides: dict | None = None,
            threads: int | None = None) -> dict:
    """Train, evaluate and score the attention of one run, skipping steps already done; return its timing."""
    study_dir = Path(study_dir)
    overrides = dict(overrides or {})
    timing_file = run.run_dir / TIMING_FILE
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    final = run.checkpoint / protocol.checkpoint_file
    if not final.is_file():
        shutil.rmtree(run.run_dir, ignore_errors=True)  # a partial training is not resumed: it restarts
        timing = {"train_s": _bundle([TRAIN_CONFIG, *run.overlays], run, study_dir, overrides,
                                     run.run_dir / "train.log", threads), "threads": threads}
    evaluation = {**overrides, "ckpt_path": final, "ckpt_key": protocol.checkpoint_key}
    if not run.metrics_file.is_file():  # its figures are per-run diagnostics a study does not read: skipped
        timing["evaluate_s"] = _bundle([TRAIN_CONFIG, *run.overlays, EVALUATE_CONFIG], run, study_dir,
                                       {**evaluation, "eval_figures": False}, run.run_dir / "evaluate.log", threads)
    if not run.gaze_file.is_file():
        timing["gaze_attention_s"] = _bundle([TRAIN_CONFIG, *run.overlays, GAZE_CONFIG], run, study_dir,
                                             evaluation, run.run_dir / "gaze_attention.log", threads)
    timing_file.write_text(json.dumps(timing, indent=2) + "\n")
    return timing


def run_all(protocol: Protocol, runs: Sequence[RunSpec], study_dir: str | os.PathLike,
            overrides: dict | None = None, on_done: Callable[[RunSpec, dict], None] | None = None,
            jobs: int = 1) -> None:
    """Every run, ``jobs`` at a time (each with ``cpu_count // jobs`` threads); ``on_done(run, timing)`` after
    each, one at a time (e.g. to rewrite the results so far). Runs are independent processes, so their
    numbers do not depend on ``jobs`` beyond the thread count's floating-point reduction order."""
    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // jobs)
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(runs), desc="study", unit="run") as bar:
        futures = {pool.submit(run_one, protocol, run, study_dir, overrides, threads): run for run in runs}
        for future in as_completed(futures):
            timing = future.result()
            with lock:
                bar.update()
                if on_done is not None:
                    try:
                        on_done(futures[future], timing)
                    except Exception:  # an interim report must not stop the runs; the final one raises
                        logger.exception("interim report after %s seed %d failed", futures[future].arm,
                                         futures[future].seed)


def prepare(protocol: Protocol, study_dir: str | os.PathLike, overrides: dict | None = None) -> int:
    """Before the runs: generate the phantom world the regime names (once) and fill the text-feature cache
    with every training and validation report, so that parallel runs neither draw the world twice nor encode
    the same reports at once. Returns the number of cached reports (0 without a text cache)."""
    from monai.bundle import ConfigParser

    from eclip_monai.transforms.text import TokenizeText

    parser = ConfigParser()
    parser.read_config([TRAIN_CONFIG, protocol.regime])
    parser.update({"runs_dir": str(study_dir), **(overrides or {})})
    parser.get_parsed_content("prepare_data")
    cache = parser.get_parsed_content("network_def").text_cache
    if cache is None:
        return 0
    tokenize = TokenizeText(parser.get_parsed_content("tokenizer"))
    reports = {item["report"] for key in ("train#datalist", "validate#datalist")
               for item in parser.get_parsed_content(key)}
    tokens = [tokenize(text) for text in sorted(reports)]
    for start in range(0, len(tokens), 256):
        cache.pooled(torch.stack(tokens[start:start + 256]))
    return len(cache)
