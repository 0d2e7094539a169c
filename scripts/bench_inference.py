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

import importlib.util
import io
import warnings
from dataclasses import asdict

import bench_common as bc
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from eclip_monai.networks import build_eclip

HEADER = ("mode", "batch", "runtime", "ms / call", "images/s", "vs eager", "of matmul peak",
          "max diff vs eager")


class ImageEncoder(nn.Module):
    """Image → normalised embedding, the part of eCLIP that inference runs per image."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.encode_image(image)


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model as ONNX bytes (static shape), by torch's TorchScript-based exporter, else its dynamo one."""
    buffer, names = io.BytesIO(), dict(input_names=["image"], output_names=["embedding"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), buffer, opset_version=17, dynamo=False, **names)
        except Exception:  # the legacy exporter is gone or refuses the graph: use the dynamo exporter
            buffer = io.BytesIO()
            torch.onnx.export(model, (example,), dynamo=True, **names).save(buffer)
    return buffer.getvalue()


def ort_runner(model_bytes: bytes, example: torch.Tensor, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def build_runners(model: nn.Module, example: torch.Tensor, amp: bool) -> tuple[dict, dict]:
    """``name -> callable`` for one input shape, and ``name -> note`` for contenders that could not run."""
    autocast = dict(device_type=example.device.type, dtype=torch.bfloat16, enabled=amp)

    def runner(module):
        def call():
            with torch.inference_mode(), torch.autocast(**autocast):
                return module(example)
        return call

    runners, notes = {"eager": runner(model)}, {}
    try:
        with torch.no_grad(), torch.autocast(**autocast), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            runners["torchscript"] = runner(torch.jit.freeze(traced))
    except Exception as exc:  # report, do not fail the whole benchmark
        notes["torchscript"] = f"torch.jit.trace failed: {type(exc).__name__}: {exc}"
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if example.device.type != "cpu":
        notes["onnxruntime"] = "ONNX Runtime CPU package: not run on CUDA"
    elif missing:
        notes["onnxruntime"] = (f"{' and '.join(missing)} not installed: ONNX Runtime skipped "
                                "(pip install onnx onnxruntime onnxscript to include it)")
    else:
        try:
            runners["onnxruntime"] = ort_runner(export_onnx(model, example), example, torch.get_num_threads())
        except Exception as exc:  # report, do not fail the whole benchmark
            notes["onnxruntime"] = f"ONNX export or session failed: {type(exc).__name__}: {exc}"
    return runners, notes


def run(cfg: bc.InferenceConfig) -> dict:
    device, amp, skipped = bc.prepare_device(cfg)
    if skipped:
        return {"config": asdict(cfg), "skipped": skipped}
    dtype = torch.bfloat16 if amp else torch.float32
    torch.manual_seed(0)
    model = ImageEncoder(build_eclip(cfg.model, image_size=cfg.image_size, experts=False)).to(device).eval()
    bc.log(f"image encoder on {device}: {cfg.model} at {cfg.image_size}², {torch.get_num_threads()} "
           f"thread(s), amp={'bf16' if amp else 'off'}")
    with (torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp),
          FlopCounterMode(display=False) as counter):
        model(torch.randn(1, 1, cfg.image_size, cfg.image_size, device=device))
    flops_per_image = counter.get_total_flops()
    peak = bc.matmul_peak(cfg.matmul_size, dtype, device)
    result = {"config": asdict(cfg), "device": str(device), "modes": {}, "notes": {}}
    for mode, batch, calls in (("latency_batch1", 1, cfg.latency_calls), ("throughput", cfg.batch, 1)):
        example = torch.randn(batch, 1, cfg.image_size, cfg.image_size, device=device)
        runners, notes = build_runners(model, example, amp)
        result["notes"].update(notes)
        reference = runners["eager"]().float().cpu()
        diffs = {n: float((r().float().cpu() - reference).abs().max()) for n, r in runners.items()}
        bc.log(f"{mode}: batch {batch}, {calls} call(s) per round, {cfg.rounds} rounds")
        repeated = {n: (lambda r=r: [r() for _ in range(calls)]) for n, r in runners.items()}
        times = bc.interleaved_rounds(repeated, cfg.rounds, device)
        seconds = {n: bc.median(t) / calls for n, t in times.items()}
        result["modes"][mode] = {"batch": batch, "contenders": {n: {
            "ms_per_call": 1e3 * s,
            "images_per_s": batch / s,
            "max_abs_diff_vs_eager": diffs[n],
            "speedup_vs_eager": seconds["eager"] / s,
            "fraction_of_matmul_peak": flops_per_image * batch / s / 1e9 / peak["gflop_per_s"],
        } for n, s in seconds.items()}}
    result["gflop_per_image"] = flops_per_image / 1e9
    result["reference_matmul"] = peak
    for note in result["notes"].values():
        bc.log(f"note: {note}")
    return result


def report(result: dict, title: str = "Inference", level: int = 2) -> list[bc.Section]:
    if "skipped" in result:
        return [bc.skipped(title, result["skipped"], "bench_inference")]
    c, peak = result["config"], result["reference_matmul"]
    rows = [[mode.replace("_", " "), m["batch"], name, f"{s['ms_per_call']:.2f}", f"{s['images_per_s']:.1f}",
             f"{s['speedup_vs_eager']:.2f}x", f"{100 * s['fraction_of_matmul_peak']:.1f} %",
             f"{s['max_abs_diff_vs_eager']:.1e}"]
            for mode, m in result["modes"].items() for name, s in m["contenders"].items()]
    intro = (
        f"Image encoder of `{c['model']}` at {c['image_size']}² (image → normalised embedding), "
        f"{result['gflop_per_image']:.2f} GFLOP per image; reference: eager PyTorch under `inference_mode`. "
        f"Matrix peak: {peak['size']}² {peak['dtype']} matmul, {peak['gflop_per_s']:.0f} GFLOP/s."
    )
    notes = ["- Batch-1 eager latency suffers most on a shared CPU: each of its many small operators waits "
             "for both OpenMP threads; ONNX Runtime runs fewer, fused kernels."]
    notes += [f"- {name}: {note}" for name, note in result.get("notes", {}).items()]
    return [bc.Section(title, intro, HEADER, rows, notes, level)]


def main(argv: list[str] | None = None) -> dict:
    return bc.main(bc.InferenceConfig, __doc__, run, report, argv)


if __name__ == "__main__":
    main()
