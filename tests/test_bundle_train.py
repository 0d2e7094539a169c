"""The training bundle as ``python -m monai.bundle run`` runs it (MONAI's ``run``, in-process) with the tiny CPU
overlay.

A 48-study phantom at 64² keeps each run to seconds; the checks are on what the run leaves behind: checkpoints,
TensorBoard scalars (loss, curriculum, validation recall); the fine-tuning overlay is checked in-process.
The command itself, typed in a shell, runs in ``test_bundle_journey.py`` (with multi-process training); exact
resume of this bundle through ``--resume_from`` after a SIGKILL is ``test_fault_injection.py``'s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "bundle/configs/train.json", ROOT / "configs/tiny_cpu.json"]
SMALL = {"image_size": 64, "batch_size": 8, "generate_phantom": False, "num_workers": 0, "val_interval": 1}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from eclip_monai.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, studies=48, seed=0, workers=1, eval_size=4, progress=False)
    return root


def run_bundle(configs, **overrides) -> None:
    """MONAI's ``run`` with ``SMALL`` and the overrides, on the CPU."""
    from monai.bundle import run

    run(config_file=[str(c) for c in configs], logging_file=str(ROOT / "bundle/configs/logging.conf"),
        device="$torch.device('cpu')", **{k: str(v) if isinstance(v, Path) else v for k, v in
                                          {**SMALL, **overrides}.items()})


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_bundle_trains_validates_logs_and_checkpoints(phantom, tmp_path):
    run_bundle(CONFIGS, dataset_dir=phantom, runs_dir=tmp_path / "runs", max_epochs=2)
    run_dir = tmp_path / "runs" / "eclip_tiny"
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"final.pt", "model.pt", "checkpoint_epoch=2.pt"} <= ckpts
    assert not [name for name in ckpts if name.startswith(".") or name.endswith(".tmp")]  # atomic writes only
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    assert {"network", "optimizer", "lr_scheduler", "curriculum", "expert_stream", "trainer"} <= set(final)
    assert final["trainer"]["iteration"] > 0 and "heatmap_processor.patchify.weight" in str(list(final["network"]))
    logged = scalars(run_dir)
    for tag in ("loss", "acc_i2t", "acc_t2i", "temperature", "expert_p", "expert_used", "lr", "val_mean_R@1",
                "val_modality_gap"):
        assert tag in logged, tag
    assert len(logged["val_mean_R@1"]) == 2 and all(0.0 <= v <= 1.0 for v in logged["val_mean_R@1"])
    assert logged["expert_p"][0] == 0.0 and max(logged["expert_p"]) == pytest.approx(0.5)  # cold start, then peak


def test_clip_baseline_overlay_trains_without_experts(phantom, tmp_path):
    run_bundle([*CONFIGS, ROOT / "configs/clip_baseline.json"], dataset_dir=phantom,
               runs_dir=tmp_path / "runs", max_epochs=1)
    run_dir = tmp_path / "runs" / "eclip_tiny_clip_baseline"
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    assert not any("heatmap_processor" in k for k in final["network"])
    assert set(scalars(run_dir)["expert_used"]) == {0.0}


@pytest.mark.parametrize("restore", [True, False])
def test_fine_tuning_starts_from_the_published_weights_with_the_curriculum_where_it_belongs(restore, tmp_path):
    from monai.bundle import ConfigParser

    from test_bundle_inference import tiny_checkpoint

    published = torch.load(tiny_checkpoint(tmp_path / "model.pt"), weights_only=True)["model"]
    parser = ConfigParser()
    parser.read_config([str(c) for c in (*CONFIGS, ROOT / "bundle/configs/finetune.json")])
    parser.update({"model_name": "eclip-tiny-cnn", "image_size": 64, "finetune_from": str(tmp_path / "model.pt"),
                   "restore_heatmap_processor": restore})
    torch.manual_seed(0)
    tuned = parser.get_parsed_content("initial_weights").state_dict()
    for name, value in tuned.items():
        kept = torch.equal(value, published[name])
        assert kept if restore or not name.startswith("heatmap_processor.") else not kept, name
    # a restored processor is already primed: no cold start; a fresh one is primed during the cold start
    assert parser.get_parsed_content("curriculum_handler#cold_ratio") == (0.0 if restore else 0.1)
    parser["finetune_from"] = None
    assert parser.get_parsed_content("initial_weights", default=None) is None


@pytest.mark.parametrize("key, overlay", [("generate_phantom", None), ("mixup", None),
                                          ("eval_figures", "bundle/configs/evaluate.json"),
                                          ("verify_shards", "configs/shards.json")])
def test_a_switch_typed_in_lower_case_on_the_command_line_is_refused_naming_it(key, overlay, tmp_path):
    """``--generate_phantom false`` reaches the config as the string 'false', which is truthy."""
    from monai.bundle import ConfigWorkflow

    configs = [str(c) for c in (*CONFIGS, *([ROOT / overlay] if overlay else []))]
    workflow = ConfigWorkflow(configs, workflow_type="train", logging_file=False, runs_dir=str(tmp_path),
                              **{key: "false"})
    with pytest.raises(RuntimeError) as failure:
        workflow.initialize()
    cause = failure.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, TypeError) and str(cause).startswith(f"{key}: expected True or False, found 'false'")
    assert f"--{key} False" in str(cause)
