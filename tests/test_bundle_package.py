"""The packaged bundle archive: contents, and that it runs outside the development checkout.

``scripts/package_bundle.py`` builds ``eclip_cxr_v<version>.zip`` from a tiny random-init checkpoint;
MONAI's ``download`` (from a ``file://`` URL) unpacks it and ``load`` / ``python -m monai.bundle run`` use
it in a fresh virtual environment that sees the third-party packages but not ``eclip_monai`` (a ``.pth`` line
adds the development site-packages without running its editable-install hook), so only the bundle's vendored
copy can serve the configs. Its outputs must equal the development code's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_bundle_inference import ENV, ROOT, read_result, reference_outputs, tiny_checkpoint, write_inputs

META = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
NAME = "eclip_cxr"
ARCHIVE = f"{NAME}_v{META['version']}.zip"
OVERLAY = {"model_name": "eclip-tiny-cnn", "image_size": 64, "batch_size": 32, "max_epochs": 15}

LOAD_SCRIPT = """
import json, sys
from pathlib import Path
import monai.bundle, numpy as np, torch
bundle_dir, archive, args_file, image, out = sys.argv[1:]
monai.bundle.download(name="eclip_cxr", bundle_dir=bundle_dir, url=Path(archive).as_uri(), progress=False)
net = monai.bundle.load(name="eclip_cxr", bundle_dir=bundle_dir, source="github", workflow_type="inference",
                        args_file=args_file, device="cpu")
import eclip_monai
with torch.no_grad():
    probabilities = net.eval()(torch.from_numpy(np.load(image)))
json.dump({"module": eclip_monai.__file__, "type": type(net).__name__,
           "probabilities": probabilities.tolist()}, open(out, "w"))
"""


def package(checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    overlay = out / "overlay.json"
    out.mkdir(parents=True, exist_ok=True)
    overlay.write_text(json.dumps(OVERLAY))
    cmd = [sys.executable, str(ROOT / "scripts" / "package_bundle.py"), "--checkpoint", str(checkpoint),
           "--config", str(overlay), "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=out, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    checkpoint = tiny_checkpoint(tmp / "final.pt")
    done = package(checkpoint, tmp / "dist", "--weights_url", "https://example.org/releases/v1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    archive = tmp / "dist" / ARCHIVE
    assert done.stdout.strip().endswith(ARCHIVE)
    return archive, checkpoint


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from eclip_monai.data.phantom import ensure_phantom

    root = ensure_phantom(tmp_path_factory.mktemp("phantom"), studies=2, seed=0, workers=1, eval_size=1,
                          progress=False)
    dicom = sorted((root / "mimic-cxr" / "files").rglob("*.dcm"))[0]
    folder = tmp_path_factory.mktemp("inputs") / "images"
    write_inputs(folder, dicom)
    return folder


def fresh_venv(path: Path) -> Path:
    """A virtual environment whose only view of the development venv is its site-packages as a plain path."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dev_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_archive_holds_configs_docs_license_weights_and_the_code(packaged, tmp_path):
    from monai.bundle import download_large_files

    archive, checkpoint = packaged
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json",
                         "configs/evaluate.json", "configs/multi_gpu_train.json", "configs/logging.conf",
                         "docs/README.md", "docs/data_license.txt", "LICENSE", "large_files.yml",
                         "models/model.pt", "eclip_monai/__init__.py", "eclip_monai/inference/engine.py",
                         "eclip_monai/networks/model_configs/eclip-tiny-cnn.json"):
            assert f"{NAME}/{required}" in names, required
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        weights = zf.read(f"{NAME}/models/model.pt")
        large_files = yaml.safe_load(zf.read(f"{NAME}/large_files.yml"))
        inference = json.loads(zf.read(f"{NAME}/configs/inference.json"))
        metadata = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
        state = torch.load(zf.open(f"{NAME}/models/model.pt"), weights_only=True)
    expected = torch.load(checkpoint, weights_only=True)["model"]
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert large_files["large_files"] == [{"path": "models/model.pt",
                                           "url": "https://example.org/releases/v1/model.pt",
                                           "hash_val": hashlib.md5(weights).hexdigest(), "hash_type": "md5"}]
    assert (inference["model_name"], inference["image_size"]) == ("eclip-tiny-cnn", 64)
    assert inference["batch_size"] == 8  # training-only keys of the overlay are not carried over
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path)
    download_large_files(bundle_path=str(tmp_path / NAME))  # present with the listed md5: nothing to fetch
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [64, 64]
    assert metadata["network_data_format"]["post_processed_outputs"]["embedding"]["num_channels"] == 256


def test_packaged_metadata_verifies_offline(packaged, tmp_path):
    from monai.bundle import verify_metadata

    archive, _ = packaged
    with zipfile.ZipFile(archive) as zf:
        zf.extract(f"{NAME}/configs/metadata.json", tmp_path)
    schema = ROOT / "tests" / "data" / "bundle_meta_schema.json"
    verify_metadata(meta_file=str(tmp_path / NAME / "configs" / "metadata.json"), filepath=str(schema),
                    hash_val=hashlib.md5(schema.read_bytes()).hexdigest(), hash_type="md5")


def test_weights_of_another_architecture_are_refused_with_the_checkpoint_named(packaged, tmp_path):
    from eclip_monai.errors import CXRDataError

    spec = importlib.util.spec_from_file_location("package_bundle", ROOT / "scripts" / "package_bundle.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, checkpoint = packaged
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps(OVERLAY))
    with pytest.raises(CXRDataError) as failure:
        script.package(checkpoint, tmp_path, [overlay], ["experts=false"])
    assert f"{checkpoint}: model: the weights do not fit the network" in str(failure.value)
    assert "'experts': False" in str(failure.value)
    assert not list(tmp_path.glob("*.zip"))


def test_unpacked_archive_runs_in_a_fresh_venv_like_the_dev_checkout(packaged, inputs, tmp_path):
    archive, checkpoint = packaged
    python = fresh_venv(tmp_path / "venv")
    hidden = subprocess.run([str(python), "-c", "import eclip_monai"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert "No module named 'eclip_monai'" in hidden.stderr  # the development checkout is out of reach

    # monai.bundle.download unpacks the archive; monai.bundle.load builds network_def with its weights
    bundle_dir = tmp_path / "bundles"
    (tmp_path / "args.json").write_text(json.dumps({"bundle_root": str(bundle_dir / NAME)}))
    (tmp_path / "load.py").write_text(LOAD_SCRIPT)
    torch.manual_seed(3)
    image = torch.randn(2, 1, 64, 64)
    np.save(tmp_path / "image.npy", image.numpy())
    done = subprocess.run([str(python), "load.py", str(bundle_dir), str(archive), "args.json", "image.npy",
                           "loaded.json"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert loaded["type"] == "ZeroShotClassifier"
    assert Path(loaded["module"]).resolve() == (bundle_dir / NAME / "eclip_monai" / "__init__.py").resolve()

    from eclip_monai.data.formats import PHANTOM_FINDINGS
    from eclip_monai.networks import build_eclip
    from eclip_monai.networks.zero_shot import ZeroShotClassifier
    from eclip_monai.transforms import build_tokenizer

    dev = ZeroShotClassifier(build_eclip("eclip-tiny-cnn", image_size=64), build_tokenizer("eclip-tiny-cnn"),
                             PHANTOM_FINDINGS)
    dev.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        np.testing.assert_allclose(loaded["probabilities"], dev.eval()(image).numpy(), atol=1e-5)

    # the inference workflow of the unpacked bundle, with its own packaged config and weights
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", str(bundle_dir / NAME / "configs" /
           "inference.json"), "--bundle_root", str(bundle_dir / NAME), "--input_dir", str(inputs),
           "--output_dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = reference_outputs(checkpoint, sorted(inputs.iterdir()))
    assert len(expected) == 3
    for stem, (probabilities, embedding) in expected.items():
        result, written = read_result(tmp_path / "out", stem)
        np.testing.assert_allclose(list(result["findings"].values()), probabilities, atol=1e-5)
        np.testing.assert_allclose(written, embedding, atol=1e-5)


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
