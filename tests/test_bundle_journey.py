"""The Model Zoo user's journey, from the packaged archive, in a process that cannot import the checkout.

A fresh virtual environment sees the project's third-party packages (a ``.pth`` line adds the development
site-packages without running its editable-install hook) but not ``eclip_monai``, so only the archive's vendored
copy can serve the configs. In it, every fenced command of ``bundle/docs/README.md`` runs verbatim, in order,
from the folder that holds the unpacked bundle (only placeholder paths are substituted): download, inference,
loading in Python, training, fine-tuning, multi-process training, evaluation, gaze attention, report
generation, the metadata and network checks and both exports. ``monai.bundle.load`` is then called with
MONAI's defaults and with each workflow type. The commands run once (a module fixture), in two ordered lanes
that share nothing but the download (the training chain, and everything else), and the tests check what they
left behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RECIPE, ROOT
from test_bundle_inference import read_result, reference_outputs, write_inputs

README = ROOT / "bundle" / "docs" / "README.md"
SCHEMA = ROOT / "tests" / "data" / "bundle_meta_schema.json"
NAME = "eclip_cxr"
WORKFLOW_TYPES = (None, "train", "training", "inference", "infer", "eval", "evaluation")

LOAD_SCRIPT = """
import json, sys
import monai.bundle, torch
out, types = sys.argv[1], json.loads(sys.argv[2])
reference = torch.load("eclip_cxr/models/model.pt", weights_only=True)
image = json.load(open("eclip_cxr/configs/metadata.json"))["network_data_format"]["inputs"]["image"]
found = {}
for workflow_type in types:
    kwargs = {} if workflow_type is None else {"workflow_type": workflow_type}
    loaded = monai.bundle.load(name="eclip_cxr", bundle_dir=".", **kwargs)
    state = loaded.state_dict() if isinstance(loaded, torch.nn.Module) else loaded
    found[str(workflow_type)] = {
        "type": type(loaded).__name__,
        "keys_missing": sorted(set(reference) - set(state)),
        "equal": all(torch.equal(state[k].cpu(), v) for k, v in reference.items() if k in state),
        "probabilities": (loaded.eval()(torch.zeros(1, 1, *image["spatial_shape"])).tolist()
                          if hasattr(loaded, "embed") else None),
    }
import eclip_monai
json.dump({"module": eclip_monai.__file__, "loads": found}, open(out, "w"))
"""


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every ``bash`` and ``python`` fenced block of the bundle README, in order."""
    return re.findall(r"```(bash|python)\n(.*?)```", README.read_text(), flags=re.S)


def substitute(code: str, paths: dict[str, str]) -> str:
    for placeholder, path in paths.items():
        code = re.sub(placeholder, path, code)
    return code


def fresh_venv(path: Path) -> Path:
    """A virtual environment whose only view of the development venv is its site-packages as a plain path,
    with a ``torchrun`` of its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dev_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    torchrun = path / "bin" / "torchrun"
    torchrun.write_text(f"#!{python}\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n")
    torchrun.chmod(0o755)
    return python


@pytest.fixture(scope="module")
def journey(packaged, phantom_dicom, tmp_path_factory):
    archive, checkpoint = packaged
    tmp = tmp_path_factory.mktemp("journey")
    python = fresh_venv(tmp / "venv")
    work = tmp / "work"
    work.mkdir()
    inputs = write_inputs(tmp / "cxr", phantom_dicom)
    (tmp / "cxr" / "corrupt.dcm").write_bytes(phantom_dicom.read_bytes()[:600])  # header, no pixels
    (tmp / "cxr" / "notes.txt").write_text("not an image")
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    hidden = subprocess.run([str(python), "-c", "import eclip_monai"], cwd=work, env=env, capture_output=True,
                            text=True)
    paths = {r"https://<release-host>/eclip_cxr_v[0-9.]+\.zip": archive.as_uri(),
             r"/path/to/cxr_folder": str(tmp / "cxr"), r"eclip_cxr/eval/schema\.json": str(SCHEMA)}
    (work / "load.py").write_text(LOAD_SCRIPT)
    commands = [(code, ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [str(python), "-c", code])
                for language, code in ((language, substitute(code, paths)) for language, code in readme_blocks())]
    commands.append(("load.py", [str(python), "load.py", "loaded.json", json.dumps(WORKFLOW_TYPES)]))

    def lane(steps):
        return [(code, subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900))
                for code, cmd in steps]

    download, rest = commands[:1], commands[1:]
    training = [step for step in rest if re.match(r"(python|torchrun) .*run .*train\.json", step[0], flags=re.S)]
    others = [step for step in rest if step not in training]
    runs = lane(download)
    with ThreadPoolExecutor(2) as pool:
        lanes = [pool.submit(lane, steps) for steps in (training, others)]
        runs += [run for future in lanes for run in future.result()]
    return {"work": work, "runs": runs, "hidden": hidden, "inputs": inputs, "checkpoint": checkpoint}


def test_the_checkout_is_out_of_reach_and_every_readme_command_succeeds(journey):
    assert "No module named 'eclip_monai'" in journey["hidden"].stderr
    assert len(journey["runs"]) >= 13
    for code, done in journey["runs"]:
        assert done.returncode == 0, f"{code}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def test_readme_names_the_packaged_version():
    version = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())["version"]
    assert f"eclip_cxr_v{version}.zip" in README.read_text()


def test_load_returns_the_published_weights_with_defaults_and_every_workflow_type(journey):
    loaded = json.loads((journey["work"] / "loaded.json").read_text())
    assert Path(loaded["module"]).resolve() == (journey["work"] / NAME / "eclip_monai" / "__init__.py").resolve()
    types = {name: found["type"] for name, found in loaded["loads"].items()}
    # train.json and inference.json build networks; MONAI returns the state dict for types with no config
    assert types == {"None": "ECLIP", "train": "ECLIP", "training": "dict", "inference": "ZeroShotClassifier",
                     "infer": "dict", "eval": "dict", "evaluation": "dict"}
    for name, found in loaded["loads"].items():  # the zero-shot classifier leaves the processor behind
        dropped = [k for k in found["keys_missing"] if not k.startswith("heatmap_processor.")]
        assert found["equal"] and not dropped and bool(found["keys_missing"]) == (name == "inference"), name
    eager = eager_classifier(journey["checkpoint"])
    with torch.no_grad():
        expected = eager(torch.zeros(1, 1, 64, 64))
    torch.testing.assert_close(torch.tensor(loaded["loads"]["inference"]["probabilities"]), expected,
                               atol=1e-5, rtol=0)  # prompt embeddings from the published text tower


def test_inference_from_the_archive_equals_the_development_code_and_skips_bad_files(journey):
    log = next(done.stdout + done.stderr for code, done in journey["runs"]
               if code.startswith("python -m monai.bundle run --config_file eclip_cxr/configs/inference.json"))
    assert "corrupt.dcm" in log and "1 of 4 input files could not be read" in log
    output = journey["work"] / "inference"
    for stem, (probabilities, embedding) in reference_outputs(journey["checkpoint"],
                                                              list(journey["inputs"].values())).items():
        result, written = read_result(output, stem)
        np.testing.assert_allclose(list(result["findings"].values()), probabilities, atol=1e-5)
        np.testing.assert_allclose(written, embedding, atol=1e-5)
    assert not list(output.glob("corrupt*")) and not list(output.glob("notes*"))


def test_training_fine_tuning_and_evaluation_write_their_results(journey):
    from eclip_monai.data import build_mimic_datalist

    runs = journey["work"] / "runs"
    final = torch.load(runs / "eclip" / "checkpoints" / "final.pt", weights_only=False)  # the torchrun run
    assert not any(k.startswith("module.") for k in final["network"])  # the bare network, loadable anywhere
    train = build_mimic_datalist(journey["work"] / "data" / "phantom" / "mimic-cxr", splits=["train"])
    per_rank = -(-len(train) // 2)  # DistributedSampler pads to an even split
    assert final["trainer"]["iteration"] == per_rank // RECIPE["batch_size"]
    tuned = torch.load(runs / "eclip_finetune" / "checkpoints" / "final.pt", weights_only=False)
    assert tuned["trainer"]["iteration"] == len(train) // RECIPE["batch_size"]
    metrics = json.loads((runs / "eclip" / "eval" / "metrics.json").read_text())
    assert {"chexpert_5x200", "rsna_pneumonia", "mimic_test"} <= set(metrics)
    gaze = json.loads((runs / "eclip" / "eval" / "gaze_attention.json").read_text())
    assert gaze["n_studies"] > 0 and gaze["n_gaze"] > 0
    reports = json.loads((runs / "eclip" / "reports" / "metrics.json").read_text())
    assert reports["n"] > 0 and reports["backend"] == "retrieval"


def eager_classifier(checkpoint: Path):
    """The development code's zero-shot classifier with the checkpoint's weights."""
    from eclip_monai.data.formats import DEFAULT_FINDINGS
    from eclip_monai.networks import build_eclip, build_tokenizer
    from eclip_monai.networks.zero_shot import ZeroShotClassifier

    network = build_eclip("eclip-tiny-cnn", image_size=64)
    eager = ZeroShotClassifier(network, build_tokenizer("eclip-tiny-cnn"), DEFAULT_FINDINGS)
    eager.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    return eager.eval()


def test_exports_match_the_eager_network(journey):
    """``ckpt_export`` in its default scripting mode (the Model Zoo's check) and ``onnx_export``."""
    import onnxruntime
    from monai.data import load_net_with_metadata

    from eclip_monai.data.formats import DEFAULT_FINDINGS

    eager = eager_classifier(journey["checkpoint"])
    models = journey["work"] / NAME / "models"
    scripted, meta, _ = load_net_with_metadata(str(models / "model.ts"))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(DEFAULT_FINDINGS)
    assert not [k for k in scripted.state_dict() if not k.startswith("clip.visual.")
                and k not in ("clip.logit_scale", "positive", "negative")]  # no text tower, no processor
    session = onnxruntime.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    for batch in (1, 3):
        image = torch.randn(batch, 1, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(scripted(image), eager(image), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(scripted.embed(image), eager.embed(image), atol=1e-4, rtol=1e-4)
    image = torch.randn(1, 1, 64, 64)
    (exported,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(exported, eager(image).numpy(), atol=1e-4, rtol=1e-4)
