"""The packaged bundle archive: contents, metadata, the merged training recipe and the fine-tuning overlay.

``scripts/package_bundle.py`` builds ``eclip_cxr_v<version>.zip`` from a tiny random-init checkpoint (the session
fixture ``packaged``); ``test_bundle_journey.py`` runs it in a fresh environment. The slow variant here installs
only the archive's ``required_packages_version`` with pip into a new virtual environment.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import RECIPE
from test_bundle_inference import ENV, ROOT, read_result, reference_outputs, write_inputs

META = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
NAME = "eclip_cxr"
ARCHIVE = f"{NAME}_v{META['version']}.zip"
SCHEMA = ROOT / "tests" / "data" / "bundle_meta_schema.json"


@pytest.fixture(scope="module")
def inputs(phantom_dicom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs") / "images"
    write_inputs(folder, phantom_dicom)
    return folder


def load_script():
    spec = importlib.util.spec_from_file_location("package_bundle", ROOT / "scripts" / "package_bundle.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_archive_holds_configs_docs_license_weights_and_the_code(packaged, tmp_path):
    from monai.bundle import download_large_files

    archive, checkpoint = packaged
    assert archive.name == ARCHIVE
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json",
                         "configs/evaluate.json", "configs/multi_gpu_train.json", "configs/finetune.json",
                         "configs/gaze_attention.json", "configs/generate_reports.json", "configs/logging.conf",
                         "docs/README.md", "docs/data_license.txt", "LICENSE", "large_files.yml",
                         "models/model.pt", "eclip_monai/__init__.py", "eclip_monai/inference/engine.py",
                         "eclip_monai/networks/model_configs/eclip-tiny-cnn.json"):
            assert f"{NAME}/{required}" in names, required
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        weights = zf.read(f"{NAME}/models/model.pt")
        large_files = yaml.safe_load(zf.read(f"{NAME}/large_files.yml"))
        inference = json.loads(zf.read(f"{NAME}/configs/inference.json"))
        train = json.loads(zf.read(f"{NAME}/configs/train.json"))
        metadata = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
        state = torch.load(zf.open(f"{NAME}/models/model.pt"), weights_only=True)
    expected = torch.load(checkpoint, weights_only=True)["model"]
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert large_files["large_files"] == [{"path": "models/model.pt",
                                           "url": "https://example.org/releases/v1/model.pt",
                                           "hash_val": hashlib.md5(weights).hexdigest(), "hash_type": "md5"}]
    assert (inference["model_name"], inference["image_size"]) == ("eclip-tiny-cnn", 64)
    assert inference["batch_size"] == 8  # training-only keys of the overlay are not carried over
    assert {k: train[k] for k in RECIPE} == RECIPE  # the archive's train.json is the recipe of the weights
    assert train["learning_rate"] == 1e-4 and train["pretrained"] is None
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path)
    download_large_files(bundle_path=str(tmp_path / NAME))  # present with the listed md5: nothing to fetch
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [64, 64]
    assert metadata["network_data_format"]["post_processed_outputs"]["embedding"]["num_channels"] == 256
    assert metadata["supported_apps"] == {} and not [n for n in names if "/apps/" in n]  # no app is shipped


def test_packaged_metadata_verifies_offline(packaged, tmp_path):
    from monai.bundle import verify_metadata

    archive, _ = packaged
    with zipfile.ZipFile(archive) as zf:
        zf.extract(f"{NAME}/configs/metadata.json", tmp_path)
    verify_metadata(meta_file=str(tmp_path / NAME / "configs" / "metadata.json"), filepath=str(SCHEMA),
                    hash_val=hashlib.md5(SCHEMA.read_bytes()).hexdigest(), hash_type="md5")


def test_verify_metadata_rejects_metadata_without_a_version(tmp_path):
    from monai.bundle import verify_metadata

    metadata = dict(META)
    del metadata["version"]
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="'version' is a required property"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


def test_metadata_version_is_semantic_and_in_the_changelog():
    assert META["version"] in META["changelog"]
    assert [int(part) for part in META["version"].split(".")]


def test_eval_metrics_are_the_packaged_study_run_marked_as_phantom_world(packaged):
    archive, _ = packaged
    with zipfile.ZipFile(archive) as zf:
        metrics = json.loads(zf.read(f"{NAME}/configs/metadata.json"))["eval_metrics"]
    study = json.loads((ROOT / "docs" / "results.json").read_text())
    run = next(r for r in study["per_run"] if r["arm"] == "eclip" and r["seed"] == 0)
    assert metrics["phantom_chexpert_zero_shot_auroc"] == run["chexpert_zero_shot_auroc"]
    assert "phantom world only" in metrics["note"] and "not real-data performance" in metrics["note"]
    assert all(key.startswith("phantom_") for key in metrics if key != "note")
    with pytest.raises(ValueError, match="--study_run: expected a run ARM/SEED .* found 'eclip/9'"):
        load_script().study_metrics(ROOT / "docs" / "results.json", "eclip/9")


def unpacked(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    return folder / NAME


def network_of(bundle: Path, config: str = "inference.json"):
    """What ``monai.bundle.load`` / ``run`` do first: parse the archived config and build ``network_def``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def test_checksums_list_every_shipped_file_and_sha256sum_accepts_them(packaged, tmp_path):
    from eclip_monai.integrity import CHECKSUMS_FILE, shipped_files

    archive, _ = packaged
    bundle = unpacked(archive, tmp_path)
    listed = [line.split("  ", 1)[1] for line in (bundle / CHECKSUMS_FILE).read_text().splitlines()]
    assert listed == shipped_files(bundle) and "models/model.pt" in listed and "configs/train.json" in listed
    assert "eclip_monai/integrity.py" in listed and len(listed) > 100
    for folder, manifest in ((bundle, CHECKSUMS_FILE), (archive.parent, archive.name + ".sha256")):
        done = subprocess.run(["sha256sum", "--check", "--strict", manifest], cwd=folder, capture_output=True,
                              text=True)
        assert done.returncode == 0 and "FAILED" not in done.stdout, done.stdout + done.stderr


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


TAMPERING = {
    "weights": (lambda b: _flip_a_byte(b / "models" / "model.pt"), "models/model.pt: sha256 differs"),
    "vendored module": (lambda b: (b / "eclip_monai" / "errors.py").open("a").write("\nimport os\n"),
                        "eclip_monai/errors.py: sha256 differs"),
    "added module": (lambda b: (b / "eclip_monai" / "networks" / "evil.py").write_text("import os\n"),
                     "eclip_monai/networks/evil.py: not in checksums.sha256"),
    "config": (lambda b: (b / "configs" / "inference.json").open("a").write(" "),
               "configs/inference.json: sha256 differs"),
    "missing file": (lambda b: (b / "configs" / "logging.conf").unlink(), "configs/logging.conf: listed in"),
    "no manifest": (lambda b: (b / "checksums.sha256").unlink(), "checksums.sha256: missing"),
}


@pytest.mark.parametrize("change", list(TAMPERING))
def test_a_changed_bundle_is_refused_before_its_code_is_imported_naming_the_file(packaged, tmp_path, change):
    archive, _ = packaged
    bundle = unpacked(archive, tmp_path)
    tamper, message = TAMPERING[change]
    tamper(bundle)
    with pytest.raises(RuntimeError, match="Failed to evaluate ConfigExpression") as failure:
        network_of(bundle)
    cause = failure.value.__cause__  # MONAI chains the expression's own error, which a user's traceback shows
    assert type(cause).__name__ == "BundleIntegrityError", cause
    assert str(cause).startswith(f"{bundle}/{message}"), cause
    assert str(bundle) not in sys.path


def test_an_intact_bundle_loads_and_run_outputs_beside_the_configs_are_allowed(packaged, tmp_path):
    archive, checkpoint = packaged
    bundle = unpacked(archive, tmp_path)
    (bundle / "eval").mkdir()
    (bundle / "eval" / "predictions.json").write_text("{}")  # what inference writes into the bundle
    (bundle / "configs" / "my_overlay.json").write_text("{}")  # a user's overlay
    try:
        assert network_of(bundle).__class__.__name__ == "ZeroShotClassifier"
        assert network_of(bundle, "train.json").__class__.__name__ == "ECLIP"
    finally:
        sys.path.remove(str(bundle))


def test_weights_of_another_architecture_are_refused_with_the_checkpoint_named(packaged, tmp_path):
    from eclip_monai.errors import CXRDataError

    _, checkpoint = packaged
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps(RECIPE))
    with pytest.raises(CXRDataError) as failure:
        load_script().package(checkpoint, tmp_path, [overlay], ["model_name=eclip-tiny"])
    assert f"{checkpoint}: model: the weights do not fit the inference.json network" in str(failure.value)
    assert "'model_name': 'eclip-tiny'" in str(failure.value)
    assert not list(tmp_path.glob("*.zip"))


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return pins


def required_packages() -> dict[str, str]:
    """The bundle's requirement list: MONAI, PyTorch, NumPy and ``required_packages_version``."""
    return {"monai": META["monai_version"], "torch": META["pytorch_version"], "numpy": META["numpy_version"],
            **META["required_packages_version"]}


def test_metadata_versions_are_the_locked_ones():
    pins = lock_pins()
    for name, version in required_packages().items():
        assert pins.get(name.lower().replace("_", "-")) == version, name


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_unpacked_archive_runs_after_pip_installing_only_its_required_packages(packaged, inputs, tmp_path):
    archive, checkpoint = packaged
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    requirements = [f"{name}=={version}" for name, version in required_packages().items()]
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], cwd=tmp_path,
                             capture_output=True, text=True, timeout=3000)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "bundles")
    root = tmp_path / "bundles" / NAME
    cmd = [str(python), "-m", "monai.bundle", "run",
           "--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root),
           "--input_dir", str(inputs), "--output_dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "PYTHONNOUSERSITE": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stem, (probabilities, embedding) in reference_outputs(checkpoint, sorted(inputs.iterdir())).items():
        result, written = read_result(tmp_path / "out", stem)
        np.testing.assert_allclose(list(result["findings"].values()), probabilities, atol=1e-5)
        np.testing.assert_allclose(written, embedding, atol=1e-5)
