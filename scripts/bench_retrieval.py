"""Benchmark exact top-k retrieval: torch chunked search against faiss ``IndexFlatIP``, time and peak memory.

    python scripts/bench_retrieval.py                      # 5,000 queries x 200,000 candidates, 512-d
    python scripts/bench_retrieval.py --candidates 1000000 --threads 2

Each backend runs in a fresh (spawned) process that builds the same seeded unit vectors in place, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``) and then searches, so the reported peak is the search's
own memory: it is compared with the Q x N x 4 bytes a full float32 similarity matrix would take. The two
backends' neighbours are compared too (identical up to the order of tied scores).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch

from eclip_monai.metrics.retrieval import topk_search

ROWS_PER_FILL = 8192  # data is generated in slices this tall, so creating it needs no large temporaries


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for start in range(0, n, ROWS_PER_FILL):
        block = torch.randn(min(ROWS_PER_FILL, n - start), dim, generator=generator)
        out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=-1)
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _search(backend: str, args: argparse.Namespace, conn) -> None:
    torch.set_num_threads(args.threads)
    queries = unit_vectors(args.queries, args.dim, seed=0)
    candidates = unit_vectors(args.candidates, args.dim, seed=1)
    topk_search(queries[:8], candidates[:64], args.k, backend=backend)  # load the BLAS code pages first
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    scores, idx = topk_search(queries, candidates, args.k, backend=backend)
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) * 1024
    conn.send((seconds, peak, reset, scores.numpy(), idx.numpy()))


def run(backend: str, args: argparse.Namespace):
    parent, child = mp.get_context("spawn").Pipe()
    process = mp.get_context("spawn").Process(target=_search, args=(backend, args, child))
    process.start()
    result = parent.recv()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="threads for both torch and faiss")
    args = parser.parse_args()

    full_matrix = args.queries * args.candidates * 4
    print(f"{args.queries:,} queries x {args.candidates:,} candidates, dim {args.dim}, k {args.k}, "
          f"{args.threads} thread(s); a full similarity matrix would take {full_matrix / 2**30:.2f} GiB")
    results = {}
    for backend in ("torch", "faiss"):
        seconds, peak, reset, scores, idx = results[backend] = run(backend, args)
        note = "" if reset else " (peak counter could not be reset: includes data creation)"
        print(f"{backend:>6}: {seconds:8.2f} s   peak extra memory {peak / 2**20:8.1f} MiB "
              f"= {peak / full_matrix:.4f} x full matrix{note}")
    (t_torch, _, _, s_torch, i_torch), (t_faiss, _, _, s_faiss, i_faiss) = results["torch"], results["faiss"]
    same = (i_torch == i_faiss).mean()
    print(f"speed-up of faiss over torch: {t_torch / t_faiss:.2f}x")
    print(f"same neighbours: {same:.6f} of ranks; max score difference {np.abs(s_torch - s_faiss).max():.2e}")


if __name__ == "__main__":
    main()
