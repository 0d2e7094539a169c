"""Bundle inference as a user types it: ``python -m monai.bundle run --config_file .../inference.json``.

A tiny random-init eCLIP (ResNet-10t tower at 64²) stands in for trained weights; the results the bundle
writes for a phantom DICOM, a PNG and a NIfTI must equal what the development code computes in-process from
the same checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.errors import CXRDataError
from eclip_monai.inference import image_datalist, image_stem, inference_transforms
from eclip_monai.networks import build_eclip
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from eclip_monai.networks import build_tokenizer
from eclip_monai.transforms.io import LoadCXRImage

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
INFERENCE = BUNDLE / "configs" / "inference.json"
TINY = {"model_name": "eclip-tiny-cnn", "image_size": 64}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def tiny_checkpoint(path: Path, seed: int = 123) -> Path:
    """``{"model": state_dict}`` of a tiny eCLIP, perturbed so it differs from any fresh initialisation."""
    torch.manual_seed(seed)
    network = build_eclip(TINY["model_name"], image_size=TINY["image_size"])
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.01 * torch.randn_like(param))
    torch.save({"model": network.state_dict()}, path)
    return path


def reference_outputs(checkpoint: Path, paths: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The development code path, in-process: ``stem -> (probabilities, embedding)``."""
    network = ZeroShotClassifier(build_eclip(TINY["model_name"], image_size=TINY["image_size"]),
                                 build_tokenizer(TINY["model_name"]), DEFAULT_FINDINGS)
    network.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    network.eval()
    transform = inference_transforms(TINY["image_size"])
    out = {}
    with torch.no_grad():
        for path in paths:
            image = transform({"image": str(path)})["image"].as_tensor()[None]
            embedding = network.embed(image)
            out[image_stem(path)] = (network.probabilities(embedding)[0].numpy(), embedding[0].numpy())
    return out


def run_inference(input_dir: Path, output_dir: Path, checkpoint: Path, cwd: Path
                  ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(INFERENCE),
           "--bundle_root", str(BUNDLE), "--input_dir", str(input_dir), "--output_dir", str(output_dir),
           "--ckpt_path", str(checkpoint)]
    for key, value in TINY.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def write_inputs(folder: Path, dicom: Path) -> dict[str, Path]:
    """The phantom DICOM, the same pixels as a 16-bit PNG, and a NIfTI of them."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = LoadCXRImage()(dicom)[0].numpy()  # (rows, cols) in [0, 1]
    paths = {"dicom": folder / "study.dcm", "png": folder / "study_png.png",
             "nifti": folder / "study_nii.nii.gz"}
    paths["dicom"].write_bytes(dicom.read_bytes())
    Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(paths["png"])
    nifti = nib.Nifti1Image(pixels.T.astype(np.float32), np.eye(4))  # stored as (x = column, y = row)
    nib.save(nifti, paths["nifti"])
    return paths


@pytest.fixture(scope="module")
def bundle_run(phantom_dicom, tmp_path_factory):
    """One run over a DICOM, a PNG, a NIfTI and a corrupt DICOM, from a directory outside the repository."""
    tmp = tmp_path_factory.mktemp("inference")
    checkpoint = tiny_checkpoint(tmp / "model.pt")
    inputs = write_inputs(tmp / "input", phantom_dicom)
    (tmp / "input" / "corrupt.dcm").write_bytes(phantom_dicom.read_bytes()[:600])  # header, no pixels
    (tmp / "input" / "notes.txt").write_text("not an image")
    done = run_inference(tmp / "input", tmp / "out", checkpoint, cwd=tmp)
    return done, tmp / "out", inputs, checkpoint


def read_result(output_dir: Path, stem: str) -> tuple[dict, np.ndarray]:
    result = json.loads((output_dir / f"{stem}_findings.json").read_text())
    return result, np.load(output_dir / result["embedding"])


def test_inference_writes_findings_and_embedding_for_dicom_png_and_nifti(bundle_run):
    done, output_dir, inputs, checkpoint = bundle_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = reference_outputs(checkpoint, list(inputs.values()))
    for path in inputs.values():
        result, embedding = read_result(output_dir, image_stem(path))
        assert result["image"] == str(path.resolve())
        assert list(result["findings"]) == list(DEFAULT_FINDINGS)
        probabilities = np.array(list(result["findings"].values()))
        assert ((probabilities > 0) & (probabilities < 1)).all()
        assert embedding.shape == (256,) and embedding.dtype == np.float32
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(probabilities, expected[image_stem(path)][0], atol=1e-5)
        np.testing.assert_allclose(embedding, expected[image_stem(path)][1], atol=1e-5)


def test_the_same_pixels_as_png_score_like_the_dicom(bundle_run):
    _, output_dir, inputs, _ = bundle_run
    dicom, _ = read_result(output_dir, image_stem(inputs["dicom"]))
    png, _ = read_result(output_dir, image_stem(inputs["png"]))
    np.testing.assert_allclose(list(png["findings"].values()), list(dicom["findings"].values()), atol=1e-3)


def test_a_corrupt_file_is_skipped_with_a_warning_naming_it(bundle_run):
    done, output_dir, _, _ = bundle_run
    log = done.stdout + done.stderr
    assert "corrupt.dcm" in log and "PixelData" in log
    assert "1 of 4 input files could not be read" in log
    assert not list(output_dir.glob("corrupt*")) and not list(output_dir.glob("notes*"))
    assert not list(output_dir.glob(".*"))  # no temporary files left behind


def test_a_missing_input_dir_fails_naming_it_before_writing_anything(tmp_path):
    from monai.bundle import ConfigWorkflow

    missing = tmp_path / "no_such_dir"
    workflow = ConfigWorkflow(str(INFERENCE), workflow_type="inference", logging_file=False,
                              bundle_root=str(BUNDLE), input_dir=str(missing), output_dir=str(tmp_path / "out"),
                              ckpt_path=str(tiny_checkpoint(tmp_path / "model.pt")), **TINY)
    workflow.initialize()
    with pytest.raises(RuntimeError) as failure:
        workflow.run()
    assert f"{missing}: input_dir: expected a directory of chest X-ray files" in str(failure.value.__cause__)
    assert not (tmp_path / "out").exists()


def test_a_run_where_no_file_can_be_read_fails(phantom_dicom, tmp_path):
    from monai.bundle import ConfigWorkflow

    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    workflow = ConfigWorkflow(str(INFERENCE), workflow_type="inference", logging_file=False,
                              bundle_root=str(BUNDLE), input_dir=str(tmp_path / "input"),
                              output_dir=str(tmp_path / "out"),
                              ckpt_path=str(tiny_checkpoint(tmp_path / "model.pt")), **TINY)
    workflow.initialize()
    with pytest.raises(RuntimeError) as failure:  # MONAI's config runner wraps the error
        workflow.run()
    assert isinstance(failure.value.__cause__, CXRDataError)
    assert "input_dir: none of the 1 input files could be read" in str(failure.value.__cause__)


def test_inference_config_has_every_monai_inference_property(phantom_dicom, tmp_path):
    from monai.bundle import ConfigWorkflow

    (tmp_path / "a.dcm").write_bytes(phantom_dicom.read_bytes())
    workflow = ConfigWorkflow(str(INFERENCE), workflow_type="inference", logging_file=False,
                              input_dir=str(tmp_path), **TINY)
    workflow.initialize()
    assert not workflow.check_properties()
    assert workflow.dataset_data == [{"image": str((tmp_path / "a.dcm").resolve())}]  # an optional property


def test_the_default_config_passes_check_properties_and_a_missing_input_dir_fails_only_at_run(tmp_path):
    """As the Model Zoo checks a bundle: MONAI's defaults, no ``input_dir`` and no weights; every inference
    property is then built, and running names the missing folder."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(str(INFERENCE), workflow_type="inference", logging_file=False)
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.dataset_data == [] and len(workflow.evaluator.data_loader) == 0
    assert [name for name, _ in workflow.network_def.named_children()] == ["clip"]  # image tower only
    with pytest.raises(RuntimeError) as failure:
        workflow.run()
    assert isinstance(failure.value.__cause__, CXRDataError)
    assert f"{BUNDLE / 'input'}: input_dir: expected a directory" in str(failure.value.__cause__)


def test_inference_defaults_match_what_training_saves():
    inference = json.loads(INFERENCE.read_text())
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    for key in ("model_name", "image_size", "hf_model_name"):
        assert inference[key] == train[key], key
    assert inference["findings"] == list(DEFAULT_FINDINGS)
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(DEFAULT_FINDINGS)
    assert list(pred["channel_def"].values()) == list(DEFAULT_FINDINGS)


def test_datalist_takes_images_and_extensionless_dicoms_sorted_and_skips_the_rest(phantom_dicom, tmp_path):
    for name in ("b.png", "a.nii.gz", "c.JPG", ".hidden.png", "readme.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d").write_bytes(phantom_dicom.read_bytes())  # a DICOM without extension
    (tmp_path / "sub").mkdir()
    names = [Path(item["image"]).name for item in image_datalist(tmp_path)]
    assert names == ["a.nii.gz", "b.png", "c.JPG", "d"]
    assert [image_stem(n) for n in names] == ["a", "b", "c", "d"]


def test_datalist_refuses_two_inputs_that_would_share_result_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    (tmp_path / "x.dcm").write_bytes(b"x")
    with pytest.raises(CXRDataError, match="x.dcm and x.png would write results under the same name 'x'"):
        image_datalist(tmp_path)


def test_datalist_refuses_a_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CXRDataError, match="input_dir: expected chest X-ray files"):
        image_datalist(tmp_path)


def test_loading_weights_recomputes_the_prompt_embeddings():
    tokenizer = build_tokenizer(TINY["model_name"])
    torch.manual_seed(0)
    trained = ZeroShotClassifier(build_eclip(TINY["model_name"], image_size=64), tokenizer, ["Edema"]).eval()
    torch.manual_seed(1)
    fresh = ZeroShotClassifier(build_eclip(TINY["model_name"], image_size=64), tokenizer, ["Edema"]).eval()
    assert not torch.allclose(fresh.positive, trained.positive)
    fresh.load_state_dict(trained.state_dict())
    torch.testing.assert_close(fresh.positive, trained.positive)
    torch.testing.assert_close(fresh.negative, trained.negative)
    image = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(fresh(image), trained(image))
