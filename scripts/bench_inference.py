"""Benchmark inference of the image encoder: eager PyTorch against TorchScript and ONNX Runtime.

    python scripts/bench_inference.py                   # eclip-tiny, 224²: batch-1 latency, batch-32 rate
    python scripts/bench_inference.py --quick
    python scripts/bench_inference.py --device cuda     # AMP (bf16) on the GPU, vs a large bf16 matmul
    python scripts/bench_inference.py --json inference.json

The encoder is what the bundle serves: image (N, 1, S, S) → L2-normalised embedding (``ECLIP.encode_image``),
in eval mode under ``torch.inference_mode``. Contenders, timed in interleaved rounds:

- ``eager``: the PyTorch module (the reference);
- ``torchscript``: ``torch.jit.trace`` of it, frozen;
- ``onnxruntime``: ``torch.onnx.export`` then an ONNX Runtime CPU session on as many threads as torch uses
  (skipped with a note when ``onnx`` / ``onnxruntime`` are not installed, or on CUDA).

Outputs of every contender are compared with eager (max absolute difference). FLOPs of one forward are counted
with ``FlopCounterMode``; achieved FLOP/s are reported against a large matrix multiply timed in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import time
import warnings

import bench_common as bc
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eclip_monai.networks import build_eclip


class ImageEncoder(nn.Module):
    """Image → normalised embedding, the part of eCLIP that inference runs per image."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.encode_image(image)


def onnx_note() -> str | None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed: ONNX Runtime skipped "
            f"(pip install onnx onnxruntime onnxscript to include it)"
        )
    return None


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as ONNX bytes (static shape), by torch's TorchScript-based exporter, else its dynamo one."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=["image"],
                output_names=["embedding"],
                opset_version=17,
                dynamo=False,
            )
        except Exception:  # the legacy exporter is gone or refuses the graph: use the dynamo exporter
            buffer = io.BytesIO()
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["image"], output_names=["embedding"]
            )
            program.save(buffer)
    return buffer.getvalue()


def ort_runner(model_bytes: bytes, example: torch.Tensor, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def build_runners(model: nn.Module, example: torch.Tensor, args, device: torch.device) -> tuple[dict, dict]:
    """``name -> callable`` for one input shape, and ``name -> note`` for the skipped ones."""
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp)
    runners, notes = {}, {}

    def eager():
        with torch.inference_mode(), torch.autocast(**amp):
            return model(example)

    runners["eager"] = eager
    try:
        with torch.no_grad(), torch.autocast(**amp), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))

        def scripted():
            with torch.inference_mode(), torch.autocast(**amp):
                return traced(example)

        runners["torchscript"] = scripted
    except Exception as exc:  # report, do not fail the whole benchmark
        notes["torchscript"] = f"torch.jit.trace failed: {type(exc).__name__}: {exc}"
    note = onnx_note() if device.type == "cpu" else "ONNX Runtime CPU package: not run on CUDA"
    if note is None:
        try:
            runners["onnxruntime"] = ort_runner(
                export_onnx(model, example.cpu()), example, torch.get_num_threads()
            )
        except Exception as exc:  # report, do not fail the whole benchmark
            note = f"ONNX export or session failed: {type(exc).__name__}: {exc}"
    if note:
        notes["onnxruntime"] = note
    return runners, notes


def measure(runners: dict, calls: int, rounds: int, device) -> dict[str, float]:
    """Median seconds per call over interleaved rounds of ``calls`` calls each."""
    for run in runners.values():
        run()
    timed = {n: (lambda r=r: [r() for _ in range(calls)]) for n, r in runners.items()}
    times = bc.interleaved_rounds(timed, rounds, device)
    return {n: bc.median(t) / calls for n, t in times.items()}


def run(args: argparse.Namespace) -> dict:
    device, skipped = bc.resolve_device(args.device)
    config = {k: v for k, v in vars(args).items() if k != "json"}
    if device is None:
        bc.log(skipped)
        return {"config": config, "skipped": skipped}
    if args.threads:
        torch.set_num_threads(args.threads)
    args.amp = device.type == "cuda" and not args.no_amp
    dtype = torch.bfloat16 if args.amp else torch.float32
    torch.manual_seed(0)
    model = ImageEncoder(build_eclip(args.model, image_size=args.image_size, experts=False)).to(device).eval()
    bc.log(
        f"image encoder on {device}: {args.model} at {args.image_size}², {torch.get_num_threads()} "
        "thread(s), "
        f"amp={'bf16' if args.amp else 'off'}"
    )
    result = {"config": config, "device": str(device), "modes": {}, "notes": {}}
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp),
        FlopCounterMode(display=False) as counter,
    ):
        model(torch.randn(1, 1, args.image_size, args.image_size, device=device))
    flops_per_image = counter.get_total_flops()
    peak = bc.matmul_flops_per_s(args.matmul_size, dtype, device)
    for mode, batch, calls in (("latency_batch1", 1, args.latency_calls), ("throughput", args.batch, 1)):
        example = torch.randn(batch, 1, args.image_size, args.image_size, device=device)
        runners, notes = build_runners(model, example, args, device)
        result["notes"].update(notes)
        reference = runners["eager"]().float().cpu()
        diffs = {n: float((r().float().cpu() - reference).abs().max()) for n, r in runners.items()}
        bc.log(f"{mode}: batch {batch}, {calls} call(s) per round, {args.rounds} rounds")
        seconds = measure(runners, calls, args.rounds, device)
        result["modes"][mode] = {
            "batch": batch,
            "contenders": {
                n: {
                    "ms_per_call": 1e3 * s,
                    "images_per_s": batch / s,
                    "max_abs_diff_vs_eager": diffs[n],
                    "speedup_vs_eager": seconds["eager"] / s,
                    "fraction_of_matmul_peak": flops_per_image * batch / s / peak,
                }
                for n, s in seconds.items()
            },
        }
    result["gflop_per_image"] = flops_per_image / 1e9
    result["reference_matmul"] = {
        "size": args.matmul_size,
        "dtype": str(dtype).replace("torch.", ""),
        "gflop_per_s": peak / 1e9,
    }
    for note in result["notes"].values():
        bc.log(f"note: {note}")
    print_table(result)
    return result


def print_table(result: dict) -> None:
    peak = result["reference_matmul"]
    rows = []
    for mode, m in result["modes"].items():
        for name, c in m["contenders"].items():
            rows.append(
                [
                    mode,
                    m["batch"],
                    name,
                    f"{c['ms_per_call']:.2f}",
                    f"{c['images_per_s']:.1f}",
                    f"{c['speedup_vs_eager']:.2f}x",
                    f"{100 * c['fraction_of_matmul_peak']:.1f} %",
                    f"{c['max_abs_diff_vs_eager']:.1e}",
                ]
            )
    print(
        bc.format_table(
            rows,
            [
                "mode",
                "batch",
                "runtime",
                "ms/call",
                "images/s",
                "vs eager",
                f"of {peak['size']}² {peak['dtype']} matmul ({peak['gflop_per_s']:.0f} GFLOP/s)",
                "max |diff| vs eager",
            ],
        )
    )


def parser() -> argparse.ArgumentParser:
    p = bc.script_parser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (skipped with a note when CUDA is absent)")
    p.add_argument("--model", default="eclip-tiny")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="batch of the throughput measurement")
    p.add_argument("--latency-calls", type=int, default=20, help="batch-1 calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime threads (0: torch's default)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--no-amp", action="store_true", help="on CUDA, float32 instead of bf16 autocast")
    p.add_argument("--quick", action="store_true", help="batch 16, 10 latency calls, 3 rounds")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.batch, args.latency_calls, args.rounds = min(args.batch, 16), 10, 3
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - start
    bc.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
