"""The benchmark scripts run end to end at tiny sizes and write the results they promise.

Speed claims live in ``scripts/bench_*.py`` and ``docs/performance.md``, never in tests: nothing here asserts
a timing, only that each benchmark runs, writes the expected JSON keys and Markdown sections, and that the
heatmap benchmark's equality check (vectorised vs per-fixation loop, within 1e-5) holds. The loop itself is
checked against ``FixationsToHeatmap`` in ``test_transforms_heatmap.py``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BENCHES = ("bench_train_step", "bench_data", "bench_retrieval", "bench_inference", "bench_stream", "bench_all")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """One ``bench_all.py --smoke`` run (every area at tiny sizes) in a fresh process."""
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        str(SCRIPTS / "bench_all.py"),
        "--smoke",
        "--out-dir",
        str(out),
        "--data-dir",
        str(out / "phantom"),
    ]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "performance.json").read_text()), (out / "performance.md").read_text()


@pytest.fixture(scope="module")
def scripts_on_path():
    sys.path.insert(0, str(SCRIPTS))
    yield
    sys.path.remove(str(SCRIPTS))


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_script_documents_its_command_lines(name, scripts_on_path, capsys):
    module = importlib.import_module(name)
    assert f"python scripts/{name}.py" in module.__doc__
    with pytest.raises(SystemExit):
        module.main(["--help"])
    help_text = capsys.readouterr().out
    assert f"python scripts/{name}.py" in help_text and "--quick" in help_text
    assert name == "bench_all" or "--json" in help_text


def test_presets_and_command_lines_give_the_same_settings(scripts_on_path):
    import bench_common as bc

    kinds = {"train_step": bc.TrainStepConfig, "data": bc.DataConfig, "retrieval": bc.RetrievalConfig,
             "inference": bc.InferenceConfig, "cuda_train_step": bc.TrainStepConfig,
             "cuda_inference": bc.InferenceConfig}
    for mode, areas in bc.PRESETS.items():
        assert {area: type(settings) for area, settings in areas.items()} == kinds, mode
    argv = ["--sizes", "3000", "--quick", "--json", "r.json"]
    settings, json_path = bc.settings(bc.RetrievalConfig, "doc", argv)
    assert settings == bc.RetrievalConfig(sizes=(3000,)).quick() and json_path == "r.json"
    assert bc.settings(bc.TrainStepConfig, "doc", ["--quick"])[0] == bc.PRESETS["quick"]["train_step"]


def test_smoke_run_writes_every_area_with_its_reference(smoke):
    results, _ = smoke
    areas = results["areas"]
    assert set(areas) == {"train_step", "data", "retrieval", "inference", "cuda_train_step", "cuda_inference"}
    train = areas["train_step"]
    assert {"plain_open_clip", "clip_baseline", "eclip_expert"} <= set(train["steps"])
    for step in train["steps"].values():
        assert {"median_step_s", "images_per_s", "gflop_per_step", "fraction_of_matmul_peak"} <= set(step)
        assert step["gflop_per_step"] > 0
    assert (
        train["steps"]["eclip_expert"]["gflop_per_step"] > train["steps"]["clip_baseline"]["gflop_per_step"]
    )
    assert {"clip_baseline_throughput_vs_plain_open_clip", "eclip_expert_cost_vs_clip_baseline"} <= set(
        train["ratios"]
    )
    assert train["reference_matmul"]["gflop_per_s"] > 0

    retrieval = areas["retrieval"]["retrieval"]["3000"]
    assert {"torch", "faiss"} <= set(retrieval["contenders"])
    assert retrieval["same_neighbours_fraction"] == 1.0
    assert retrieval["contenders"]["torch"]["peak_extra_bytes"] >= 0
    assert {"zero_shot_images_per_s", "image_embedding_images_per_s"} <= set(areas["retrieval"]["zero_shot"])

    inference = areas["inference"]["modes"]
    assert set(inference) == {"latency_batch1", "throughput"}
    for mode in inference.values():
        assert {"eager", "torchscript"} <= set(mode["contenders"])
        for contender in mode["contenders"].values():
            assert contender["max_abs_diff_vs_eager"] < 1e-4

    assert set(results["targets"]) >= {
        "train_step.clip_baseline_vs_plain",
        "train_step.eclip_expert_vs_clip",
        "data.heatmap_speedup",
        "data.heatmap_identical",
    }
    for target in results["targets"].values():
        assert {"what", "value", "target", "met"} <= set(target)


def test_heatmap_benchmark_output_equals_the_per_fixation_loop(smoke):
    results, _ = smoke
    data = results["areas"]["data"]
    heatmap = data["heatmap"]
    assert heatmap["maps"] >= 1
    assert heatmap["identical_within_tolerance"] and heatmap["max_abs_diff"] <= 1e-5
    assert results["targets"]["data.heatmap_identical"]["met"]
    assert {
        "eval_pipeline_images_per_s",
        "persistent_epoch1_images_per_s",
        "persistent_epoch2_images_per_s",
        "persistent_epoch2_speedup_vs_uncached",
    } <= set(data["dicom"])
    assert data["loader"]["main_loader_images_per_s"] > 0 and data["loader"]["clip_step_images_per_s"] > 0


def test_cuda_section_is_skipped_with_a_note_without_a_gpu(smoke):
    results, markdown = smoke
    import torch

    for area in ("cuda_train_step", "cuda_inference"):
        if torch.cuda.is_available():
            assert "skipped" not in results["areas"][area]
        else:
            assert "CUDA" in results["areas"][area]["skipped"]
    assert "## 5. CUDA" in markdown


def test_markdown_report_has_every_section_and_the_targets_table(smoke):
    _, markdown = smoke
    for heading in (
        "# Performance",
        "## Targets",
        "## 1. Training step",
        "## 2. Data path",
        "## 3. Evaluation: retrieval and zero-shot",
        "## 4. Inference",
    ):
        assert heading in markdown
    assert "plain_open_clip" in markdown and "faiss" in markdown and "per-fixation heatmap loop" in markdown


def test_markdown_report_can_be_rendered_again_from_the_json(smoke, tmp_path, scripts_on_path):
    import bench_all

    results, markdown = smoke
    (tmp_path / "performance.json").write_text(json.dumps(results))
    bench_all.main(["--render", str(tmp_path / "performance.json"), "--out-dir", str(tmp_path)])
    assert (tmp_path / "performance.md").read_text() == markdown
