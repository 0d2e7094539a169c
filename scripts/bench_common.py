"""Helpers shared by the ``scripts/bench_*.py`` benchmarks: interleaved timing, matmul peaks, tables, JSON.

Not a benchmark itself. Every benchmark compares our code with a *named reference measured in the same run*,
so machine load and clock drift hit both sides alike: contenders are timed in interleaved rounds
(A, B, C, A, B, C, ...) and each reports the median over rounds.
"""

from __future__ import annotations

import argparse

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch


def resolve_device(name: str) -> tuple[torch.device | None, str | None]:
    """``(device, None)`` or ``(None, why it is skipped)``: ``--device cuda`` on a machine without CUDA is a
    note, not an error, so the same command line runs everywhere."""
    if name == "cuda" and not torch.cuda.is_available():
        return (
            None,
            "CUDA requested but torch.cuda.is_available() is False on this machine: CUDA section skipped",
        )
    return torch.device(name), None


def synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rounds(
    contenders: Mapping[str, Callable[[], None]],
    rounds: int,
    device: torch.device | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each call of each contender, timed in ``rounds`` interleaved rounds; each round visits
    the contenders in a rotated order, so none always runs right after the same neighbour."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            contenders[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def matmul_flops_per_s(
    size: int = 2048, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", repeats: int = 5
) -> float:
    """Achieved FLOP/s of a ``size``² × ``size``² matrix multiply (2·n³ FLOPs), median of ``repeats``: the
    machine's practical matrix peak, against which a training step's achieved FLOP/s is a fraction."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / median(seconds)


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def target(value: float, threshold: float, op: str, what: str) -> dict:
    """A target check as stored in the JSON: ``{"what", "value", "target", "met"}``."""
    met = value >= threshold if op == ">=" else value <= threshold if op == "<=" else value < threshold
    return {"what": what, "value": value, "target": f"{op} {threshold}", "met": bool(met)}


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        print(f"wrote {path}")


def log(message: str) -> None:
    print(message, flush=True)


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: the docstring's first paragraph as description, the whole as epilog."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)


def print_targets(targets: dict) -> None:
    for key, t in targets.items():
        print(f"target {key}: {t['value']:.3g} {t['target']} -> {'MET' if t['met'] else 'MISSED'}")
