"""MONAI's own bundle checks and exporters, run as a user types them, on the inference ``network_def``.

``verify_metadata`` validates against a local copy of the schema (``--filepath`` to an existing file skips the
download), ``verify_net_in_out`` runs the network on the metadata's input format, and the TorchScript / ONNX
exports are loaded back and compared with the eager network that holds the same tiny random-init weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eclip_monai.data.formats import PHANTOM_FINDINGS
from eclip_monai.networks import build_eclip
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from eclip_monai.transforms import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
META = BUNDLE / "configs" / "metadata.json"
INFERENCE = BUNDLE / "configs" / "inference.json"
SCHEMA = ROOT / "tests" / "data" / "bundle_meta_schema.json"
SIZE = 64
TINY = ["--model_name", "eclip-tiny-cnn", "--image_size", str(SIZE),
        "--_meta_#network_data_format#inputs#image#spatial_shape", str([SIZE, SIZE])]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def monai_bundle(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", command, *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def bundle_args(*extra: str) -> list[str]:
    return ["--meta_file", str(META), "--config_file", str(INFERENCE), "--bundle_root", str(BUNDLE), *TINY,
            *extra]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, ZeroShotClassifier]:
    """A ``{"model": state_dict}`` checkpoint and the eager network holding those weights."""
    torch.manual_seed(7)
    network = ZeroShotClassifier(build_eclip("eclip-tiny-cnn", image_size=SIZE),
                                 build_tokenizer("eclip-tiny-cnn"), PHANTOM_FINDINGS)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save({"model": network.state_dict()}, path)
    return path, network.eval()


def test_metadata_verifies_against_the_bundle_schema_offline(tmp_path):
    done = monai_bundle("verify_metadata", "--meta_file", str(META), "--filepath", str(SCHEMA), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "metadata is verified with no error" in done.stdout + done.stderr


def test_verify_metadata_rejects_metadata_without_a_version(tmp_path):
    from monai.bundle import verify_metadata

    metadata = json.loads(META.read_text())
    del metadata["version"]
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="'version' is a required property"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


def test_metadata_version_is_semantic_and_in_the_changelog():
    metadata = json.loads(META.read_text())
    assert metadata["version"] in metadata["changelog"]
    assert [int(part) for part in metadata["version"].split(".")]


def test_verify_net_in_out_accepts_the_inference_network(tmp_path):
    done = monai_bundle("verify_net_in_out", "network_def", *bundle_args("--device", "cpu"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data shape of network is verified with no error" in done.stdout + done.stderr


def test_torchscript_export_matches_the_eager_network(weights, tmp_path):
    checkpoint, eager = weights
    target = tmp_path / "model.ts"
    done = monai_bundle("ckpt_export", "network_def", "--filepath", str(target),
                        "--ckpt_file", str(checkpoint), "--key_in_ckpt", "model", "--use_trace", "True",
                        "--input_shape", str([1, 1, SIZE, SIZE]), *bundle_args(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from monai.data import load_net_with_metadata

    scripted, meta, _ = load_net_with_metadata(str(target))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(PHANTOM_FINDINGS)
    torch.manual_seed(0)
    for batch in (1, 3):
        image = torch.randn(batch, 1, SIZE, SIZE)
        with torch.no_grad():
            torch.testing.assert_close(scripted(image), eager(image), atol=1e-4, rtol=1e-4)


def test_onnx_export_matches_the_eager_network(weights, tmp_path):
    import onnxruntime

    checkpoint, eager = weights
    target = tmp_path / "model.onnx"
    done = monai_bundle("onnx_export", "network_def", "--filepath", str(target),
                        "--ckpt_file", str(checkpoint), "--key_in_ckpt", "model",
                        "--input_shape", str([1, 1, SIZE, SIZE]), *bundle_args(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    image = torch.randn(1, 1, SIZE, SIZE)
    (exported,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(exported, eager(image).numpy(), atol=1e-4, rtol=1e-4)
