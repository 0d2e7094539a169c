"""Benchmark evaluation: exact top-k retrieval (torch chunked vs faiss), peak memory; zero-shot throughput.

    python scripts/bench_retrieval.py                              # 5,000 queries x 10k, 100k, 1M candidates
    python scripts/bench_retrieval.py --sizes 1000000 --threads 2  # the 60 s target alone
    python scripts/bench_retrieval.py --quick                      # 10k and 100k
    python scripts/bench_retrieval.py --json retrieval.json

Retrieval contenders (all exact, 512-d unit vectors, k = 10), each in a fresh (spawned) process that builds
the same seeded vectors in place, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and then
searches, so the reported peak is the search's own memory, compared with the Q x N x 4 bytes a full float32
similarity matrix would take:

- ``torch``: ``eclip_monai.metrics.retrieval.chunked_topk`` (block GEMM, filtered running top-k);
- ``faiss``: ``faiss_topk`` (faiss's exact ``IndexFlatIP`` search, the named reference), which
  ``topk_search(backend="auto")`` uses for large CPU searches;
- ``previous_torch``: the chunked search as it was before the top-k filter (512 x 8192 blocks, a full
  top-k and concatenating merge per block), up to ``--previous-up-to`` candidates;
- ``gemm_only``: the torch contender's block matrix products with no top-k at all, so the search time splits
  into GEMM time and top-k time.

Zero-shot throughput: images/s of image embedding + class scoring (``zero_shot_scores`` against
prompt-ensemble class embeddings) with an untrained eclip-tiny network, against the image embedding alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time

import bench_common as bc
import numpy as np
import torch

from eclip_monai.metrics.retrieval import FAISS_MIN_PAIRS, chunked_topk, faiss_topk

ROWS_PER_FILL = 8192  # data is generated in slices this tall, so creating it needs no large temporaries
CONTENDERS = ("torch", "faiss", "previous_torch", "gemm_only")
TARGET_CANDIDATES, TARGET_SECONDS = 1_000_000, 60.0
TABLE_COLUMNS = ("candidates", "search", "median s", "GFLOP/s", "peak extra MiB", "of full matrix",
                 "time vs faiss")


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for start in range(0, n, ROWS_PER_FILL):
        block = torch.randn(min(ROWS_PER_FILL, n - start), dim, generator=generator)
        out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=-1)
    return out


@torch.no_grad()
def previous_chunked_topk(queries, candidates, k, query_chunk=512, candidate_chunk=8192):
    """The torch search before this benchmark's fix: a full top-k of every block, merged by concatenation."""
    k = min(k, candidates.shape[0])
    all_vals, all_idx = [], []
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_v = q.new_full((q.shape[0], 0), float("-inf"))
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for c0 in range(0, candidates.shape[0], candidate_chunk):
            sims = q @ candidates[c0 : c0 + candidate_chunk].T
            v, i = sims.topk(min(k, sims.shape[1]), dim=1)
            merged_v, order = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + c0], 1).gather(1, order)
            best_v = merged_v
        all_vals.append(best_v)
        all_idx.append(best_i)
    return torch.cat(all_vals), torch.cat(all_idx)


@torch.no_grad()
def gemm_only(queries, candidates, k, query_chunk=1024, candidate_chunk=4096):
    """The block products of ``chunked_topk`` (same block sizes) and nothing else."""
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        for c0 in range(0, candidates.shape[0], candidate_chunk):
            q @ candidates[c0 : c0 + candidate_chunk].T
    return None, None


SEARCHES = {
    "torch": chunked_topk,
    "faiss": faiss_topk,
    "previous_torch": previous_chunked_topk,
    "gemm_only": gemm_only,
}


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


def _search(contender: str, queries: int, candidates: int, dim: int, k: int, threads: int, conn) -> None:
    torch.set_num_threads(threads)
    q = unit_vectors(queries, dim, seed=0)
    c = unit_vectors(candidates, dim, seed=1)
    search = SEARCHES[contender]
    search(q[:8], c[:64], k)  # load the BLAS code pages first
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    scores, idx = search(q, c, k)
    seconds = time.perf_counter() - start
    peak = (_status_kib("VmHWM") - before) * 1024
    conn.send(
        (seconds, peak, reset, None if idx is None else scores.numpy(), None if idx is None else idx.numpy())
    )


class _Pipe:
    """The child end of a pipe, for a search run in this process (``--in-process``)."""

    def send(self, value):
        self.value = value


def run_search(contender: str, queries: int, candidates: int, args) -> tuple:
    if args.in_process:  # peak memory then includes what earlier searches left in the heap
        pipe = _Pipe()
        threads = torch.get_num_threads()
        _search(contender, queries, candidates, args.dim, args.k, args.threads, pipe)
        torch.set_num_threads(threads)
        return pipe.value
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=_search, args=(contender, queries, candidates, args.dim, args.k, args.threads, child)
    )
    process.start()
    result = parent.recv()
    process.join()
    return result


def bench_retrieval(args) -> dict:
    sizes = {}
    for n in args.sizes:
        full_matrix = args.queries * n * 4
        contenders = [c for c in args.contenders if c != "previous_torch" or n <= args.previous_up_to]
        rounds = args.rounds if n < args.large else args.rounds_large
        bc.log(
            f"{args.queries:,} queries x {n:,} candidates, dim {args.dim}, k {args.k}, {args.threads} "
            f"thread(s), {rounds} round(s): {', '.join(contenders)}"
        )
        times = {c: [] for c in contenders}
        peaks = {c: [] for c in contenders}
        outputs, reset_ok = {}, True
        for r in range(rounds):
            for name in contenders[r % len(contenders) :] + contenders[: r % len(contenders)]:
                seconds, peak, reset, scores, idx = run_search(name, args.queries, n, args)
                times[name].append(seconds)
                peaks[name].append(peak)
                reset_ok &= reset
                if idx is not None:
                    outputs[name] = (scores, idx)
                bc.log(
                    f"  round {r + 1}: {name:>14} {seconds:8.2f} s, peak extra memory {peak / 2**20:8.1f} MiB"
                )
        entry = {
            "candidates": n,
            "queries": args.queries,
            "full_matrix_bytes": full_matrix,
            "peak_counter_reset": reset_ok,
            "contenders": {},
        }
        for name in contenders:
            med, peak = bc.median(times[name]), max(peaks[name])
            entry["contenders"][name] = {
                "median_s": med,
                "rounds_s": times[name],
                "peak_extra_bytes": peak,
                "peak_fraction_of_full_matrix": peak / full_matrix,
                "gflop_per_s": 2 * args.queries * n * args.dim / med / 1e9,
                "queries_per_s": args.queries / med,
            }
        c = entry["contenders"]
        if "torch" in outputs and "faiss" in outputs:
            (s_t, i_t), (s_f, i_f) = outputs["torch"], outputs["faiss"]
            entry["same_neighbours_fraction"] = float((i_t == i_f).mean())
            entry["max_score_difference"] = float(np.abs(s_t - s_f).max())
        if "torch" in c and "faiss" in c:
            entry["torch_vs_faiss_time"] = c["torch"]["median_s"] / c["faiss"]["median_s"]
        if "torch" in c and "previous_torch" in c:
            entry["speedup_vs_previous_torch"] = c["previous_torch"]["median_s"] / c["torch"]["median_s"]
        if "torch" in c and "gemm_only" in c:
            gemm = c["gemm_only"]["median_s"]
            entry["gemm_s"] = gemm
            entry["torch_topk_overhead_s"] = c["torch"]["median_s"] - gemm
            entry["torch_gemm_share"] = gemm / c["torch"]["median_s"]
        auto = "faiss" if args.queries * n >= FAISS_MIN_PAIRS else "torch"
        entry["auto_backend"] = auto
        sizes[str(n)] = entry
    return sizes


@torch.no_grad()
def bench_zero_shot(args) -> dict:
    """Images/s of image embedding + zero-shot class scoring, against the image embedding alone."""
    from eclip_monai.prompts import CHEXPERT_5X200_PROMPTS, expand_prompts
    from eclip_monai.metrics.zero_shot import zero_shot_scores
    from eclip_monai.networks.zero_shot import class_embeddings
    from eclip_monai.networks import build_eclip
    from eclip_monai.networks import build_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = build_eclip(args.model, image_size=args.image_size, experts=False).eval()
    tokenizer = build_tokenizer(args.model)
    prompts = {
        name: p[: args.max_prompts or None] for name, p in expand_prompts(CHEXPERT_5X200_PROMPTS).items()
    }
    classes = class_embeddings([network.encode_text(tokenizer(p)) for p in prompts.values()])
    images = torch.randn(args.zero_shot_batch, 1, args.image_size, args.image_size)
    scale = float(network.logit_scale())
    contenders = {
        "image_embedding": lambda: network.encode_image(images),
        "embedding_and_scoring": lambda: zero_shot_scores(network.encode_image(images), classes, scale),
    }
    for f in contenders.values():
        f()
    times = bc.interleaved_rounds(contenders, args.zero_shot_rounds)
    embed, both = bc.median(times["image_embedding"]), bc.median(times["embedding_and_scoring"])
    return {
        "model": args.model,
        "image_size": args.image_size,
        "batch": args.zero_shot_batch,
        "classes": len(prompts),
        "prompts": sum(len(p) for p in prompts.values()),
        "image_embedding_images_per_s": args.zero_shot_batch / embed,
        "zero_shot_images_per_s": args.zero_shot_batch / both,
        "scoring_overhead": both / embed - 1,
    }


def run(args: argparse.Namespace) -> dict:
    result = {"config": {k: v for k, v in vars(args).items() if k != "json"}}
    result["retrieval"] = bench_retrieval(args)
    if args.zero_shot_batch:
        result["zero_shot"] = bench_zero_shot(args)
    target = result["retrieval"].get(str(TARGET_CANDIDATES))
    if target is not None and args.queries == 5000:
        c = target["contenders"]
        best = min((n for n in ("torch", "faiss") if n in c), key=lambda n: c[n]["median_s"])
        result["targets"] = {
            "retrieval_1m_seconds": {
                **bc.target(
                    c[best]["median_s"],
                    TARGET_SECONDS,
                    "<",
                    f"5,000 queries x 1M candidates, seconds ({best})",
                ),
                "backend": best,
            },
            "retrieval_1m_bounded_memory": bc.target(
                max(c[n]["peak_fraction_of_full_matrix"] for n in ("torch", "faiss") if n in c),
                0.05,
                "<=",
                "peak extra memory / full similarity matrix (both backends)",
            ),
        }
    print_table(result)
    return result


def print_table(result: dict) -> None:
    rows = []
    for n, entry in result["retrieval"].items():
        faiss_s = entry["contenders"].get("faiss", {}).get("median_s")
        for name, c in entry["contenders"].items():
            rows.append(
                [
                    f"{int(n):,}",
                    name,
                    f"{c['median_s']:.2f}",
                    f"{c['gflop_per_s']:.0f}",
                    f"{c['peak_extra_bytes'] / 2**20:.0f}",
                    f"{c['peak_fraction_of_full_matrix']:.4f}",
                    f"{c['median_s'] / faiss_s:.2f}x" if faiss_s else "-",
                ]
            )
    print(
        bc.format_table(
            rows,
            TABLE_COLUMNS,
        )
    )
    for n, entry in result["retrieval"].items():
        notes = []
        if "same_neighbours_fraction" in entry:
            notes.append(f"same neighbours as faiss {entry['same_neighbours_fraction']:.6f}")
        if "gemm_s" in entry:
            notes.append(
                f"torch = {entry['gemm_s']:.2f} s GEMM + {entry['torch_topk_overhead_s']:.2f} s top-k"
            )
        if "speedup_vs_previous_torch" in entry:
            notes.append(f"{entry['speedup_vs_previous_torch']:.2f}x the previous torch search")
        print(f"{int(n):>9,}: " + "; ".join(notes))
    if "zero_shot" in result:
        z = result["zero_shot"]
        print(
            f"zero-shot ({z['model']} {z['image_size']}², batch {z['batch']}, {z['classes']} classes / "
            f"{z['prompts']} prompts): {z['zero_shot_images_per_s']:.1f} images/s; image embedding alone "
            f"{z['image_embedding_images_per_s']:.1f} images/s (scoring adds "
            f"{100 * z['scoring_overhead']:.1f} %)"
        )
    for key, t in result.get("targets", {}).items():
        print(f"target {key}: {t['value']:.4g} {t['target']} -> {'MET' if t['met'] else 'MISSED'}")


def parser() -> argparse.ArgumentParser:
    p = bc.script_parser(__doc__)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="candidate counts"
    )
    p.add_argument(
        "--candidates", type=int, default=None, help="a single candidate count (same as --sizes N)"
    )
    p.add_argument("--queries", type=int, default=5_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for torch and faiss")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument(
        "--previous-up-to",
        type=int,
        default=100_000,
        help="largest candidate count for the previous torch search",
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds below --large candidates")
    p.add_argument("--rounds-large", type=int, default=1, help="rounds from --large candidates on")
    p.add_argument("--large", type=int, default=500_000)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="search in this process instead of a fresh one each (faster start, rougher peak memory)",
    )
    p.add_argument("--model", default="eclip-tiny", help="network of the zero-shot throughput")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--zero-shot-batch", type=int, default=64, help="0 skips the zero-shot throughput")
    p.add_argument("--zero-shot-rounds", type=int, default=5)
    p.add_argument("--max-prompts", type=int, default=0, help="prompts per class (0: the whole ensemble)")
    p.add_argument("--quick", action="store_true", help="10k and 100k candidates, 2 rounds")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.candidates:
        args.sizes = [args.candidates]
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 100_000] or [min(args.sizes)]
        args.rounds, args.zero_shot_rounds = 2, 3
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    bc.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
