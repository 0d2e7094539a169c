"""The evaluation bundle (train.json + evaluate.json) on the phantom world and ``run_evaluation``: every set
evaluated from a saved checkpoint, written as JSON, CSV and figures, identical when run twice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import run as run_bundle
from PIL import Image

from eclip_monai.data import build_mimic_datalist
from eclip_monai.data.eval_sets import load_openi, load_rsna_pneumonia
from eclip_monai.data.phantom import generate_phantom
from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation import ClassificationTask, run_evaluation
from eclip_monai.networks import build_eclip
from eclip_monai.networks import build_tokenizer
from test_eval_sets import write_rsna

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
TINY = dict(model_name="eclip-tiny", experts=False, image_size=112)


def tiny_network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_eclip(**TINY)


def save_checkpoint(ckpt_dir: Path, seed: int) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": tiny_network(seed).state_dict()}, ckpt_dir / "model.pt")


def evaluate_with_bundle(dataset_dir: Path, runs_dir: Path, run_name: str) -> Path:
    """`python -m monai.bundle run` with train.json + evaluate.json for the tiny model, in-process."""
    run_bundle(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset_dir), generate_phantom=False, runs_dir=str(runs_dir), run_name=run_name,
        batch_size=8, num_workers=0, probe_seeds=[0, 1], device="$torch.device('cpu')", **TINY,
    )
    return runs_dir / run_name / "eval"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, studies=20, seed=0, workers=1, eval_size=10, progress=False)
    return root


@pytest.fixture(scope="module")
def bundle_runs(phantom, tmp_path_factory):
    """The same checkpoint evaluated twice, and a differently initialised one once."""
    root = tmp_path_factory.mktemp("evaluate")
    outputs = {}
    for run_name, seed in (("first", 0), ("again", 0), ("other", 1)):
        save_checkpoint(root / "runs" / run_name / "checkpoints", seed)
        outputs[run_name] = evaluate_with_bundle(phantom, root / "runs", run_name)
    return outputs


def test_evaluating_the_same_checkpoint_twice_gives_identical_numbers(bundle_runs):
    first = (bundle_runs["first"] / "metrics.json").read_text()
    assert first == (bundle_runs["again"] / "metrics.json").read_text()
    assert first != (bundle_runs["other"] / "metrics.json").read_text()  # the checkpoint's weights were used


def test_bundle_evaluates_every_phantom_set_with_every_metric(bundle_runs, phantom):
    results = json.loads((bundle_runs["first"] / "metrics.json").read_text())
    assert set(results) == {"chexpert_5x200", "rsna_pneumonia", "openi", "mimic_test"}
    for name in ("chexpert_5x200", "rsna_pneumonia"):
        assert set(results[name]["zero_shot"]) == {"accuracy", "macro_f1", "auroc"}
        assert set(results[name]["linear_probe"]) == {"1%", "10%", "100%"}
        assert results[name]["linear_probe"]["100%"]["n_train"] == 5  # half of the 10 images, the rest tested
        assert 0.0 <= results[name]["zero_shot"]["accuracy"] <= 1.0
    assert len(results["chexpert_5x200"]["class_similarity"]) == 5
    paired = {"openi": load_openi(phantom / "openi").datalist,
              "mimic_test": build_mimic_datalist(phantom / "mimic-cxr", splits=["test"])}
    for name, datalist in paired.items():
        assert (results[name]["n"], results[name]["skipped"]) == (len(datalist), 0)
        assert set(results[name]["retrieval"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
        assert 0 < results[name]["unique_reports"] <= len(datalist)
        quality = results[name]["embedding_quality"]
        assert 0.0 <= quality["modality_gap"] <= 2.0 and 0.0 <= quality["alignment"] <= 4.0


def test_csv_holds_every_number_of_the_json(bundle_runs):
    results = json.loads((bundle_runs["first"] / "metrics.json").read_text())
    rows = list(csv.DictReader((bundle_runs["first"] / "metrics.csv").open()))
    table = {(r["dataset"], r["task"], r["metric"]): float(r["value"]) for r in rows}
    assert table[("rsna_pneumonia", "zero_shot", "auroc")] == results["rsna_pneumonia"]["zero_shot"]["auroc"]
    probe = results["chexpert_5x200"]["linear_probe"]["10%"]["macro_f1"]["std"]
    assert table[("chexpert_5x200", "linear_probe", "10%/macro_f1/std")] == probe
    assert table[("openi", "retrieval", "t2i_R@5")] == results["openi"]["retrieval"]["t2i_R@5"]
    assert table[("mimic_test", "", "n")] == results["mimic_test"]["n"]


def test_figures_are_written_as_images(bundle_runs):
    figures = sorted(p.name for p in (bundle_runs["first"] / "figures").glob("*.png"))
    assert figures == sorted([
        "chexpert_5x200_class_similarity.png", "rsna_pneumonia_class_similarity.png",
        "openi_modality_gap.png", "openi_retrieval_gallery.png",
        "mimic_test_modality_gap.png", "mimic_test_retrieval_gallery.png",
    ])
    for name in figures:
        with Image.open(bundle_runs["first"] / "figures" / name) as image:
            assert min(image.size) > 200 and np.asarray(image.convert("L")).std() > 0


def test_a_corrupt_image_is_skipped_and_counted(tmp_path):
    write_rsna(tmp_path / "rsna", 6)
    (tmp_path / "rsna" / "stage_2_train_images" / "0003abcd-rsna.dcm").write_bytes(b"truncated")
    task = ClassificationTask("rsna_pneumonia", tmp_path / "rsna", load_rsna_pneumonia, "rsna_pneumonia",
                              probe_fractions=(1.0,))
    results = run_evaluation(tiny_network(0), build_tokenizer("eclip-tiny"), tmp_path / "eval", [task],
                             image_size=112, figures=False, progress=False)
    assert results["rsna_pneumonia"]["n"] == 5 and results["rsna_pneumonia"]["skipped"] == 1


def test_evaluate_json_lists_its_sets_and_metrics_as_components():
    from monai.bundle import ConfigParser

    from eclip_monai.evaluation import RetrievalTask

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    assert [t["name"] for t in parser["eval_tasks"]] == ["chexpert_5x200", "rsna_pneumonia", "cxr14", "openi",
                                                         "mimic_test"]
    parser["eval_tasks#1#linear_probe"] = False  # a metric switched off by editing the config
    rsna = parser.get_parsed_content("eval_tasks#1")
    assert isinstance(rsna, ClassificationTask) and rsna.reader is load_rsna_pneumonia and not rsna.linear_probe
    assert rsna.probe_fractions == parser["probe_fractions"]
    mimic = parser.get_parsed_content("eval_tasks#4")
    assert isinstance(mimic, RetrievalTask) and mimic.root == parser.get_parsed_content("mimic_root")
    assert parser.get_parsed_content("eval_tasks#2").root is None  # CXR14 is not in the phantom world: skipped
