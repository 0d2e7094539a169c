"""Session fixtures shared by the bundle tests: the packaged archive and a phantom chest X-ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The recipe the test archive is packaged with: its train.json then trains in seconds, so the bundle README's
# commands run verbatim against it.
RECIPE = {"model_name": "eclip-tiny-cnn", "image_size": 64, "batch_size": 4, "max_epochs": 1, "num_workers": 0,
          "phantom_studies": 24, "phantom_options": {"eval_size": 20, "test_gaze_fraction": 1.0, "progress": False}}


def package_archive(checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``scripts/package_bundle.py`` as a user types it, with ``RECIPE`` as the training overlay."""
    out.mkdir(parents=True, exist_ok=True)
    overlay = out / "recipe.json"
    overlay.write_text(json.dumps(RECIPE))
    cmd = [sys.executable, str(ROOT / "scripts" / "package_bundle.py"), "--checkpoint", str(checkpoint),
           "--config", str(overlay), "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every pytest-xdist worker of this run sees (the run's base temp), for fixtures built once."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@pytest.fixture(scope="session")
def packaged(tmp_path_factory) -> tuple[Path, Path]:
    """``(archive, checkpoint)``: ``eclip_cxr_v<version>.zip`` built from a tiny perturbed eCLIP checkpoint,
    once per test run (the first worker to need it builds it; the others wait on the lock)."""
    from filelock import FileLock

    from test_bundle_inference import tiny_checkpoint

    tmp = shared_dir(tmp_path_factory, "package")
    tmp.mkdir(parents=True, exist_ok=True)
    with FileLock(str(tmp) + ".lock"):
        built = tmp / "archive.txt"
        if not built.is_file():
            checkpoint = tiny_checkpoint(tmp / "final.pt")
            done = package_archive(checkpoint, tmp / "dist", "--weights_url",
                                   "https://example.org/releases/v1", "--study_results",
                                   str(ROOT / "docs" / "results.json"), "--study_run", "eclip/0")
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            built.write_text(done.stdout.strip().splitlines()[-1])
    archive = Path(built.read_text())
    assert archive.is_file(), archive
    return archive, tmp / "final.pt"


@pytest.fixture(scope="session")
def phantom_dicom(tmp_path_factory) -> Path:
    """One frontal phantom DICOM."""
    from eclip_monai.data.phantom import ensure_phantom

    root = ensure_phantom(tmp_path_factory.mktemp("phantom"), studies=2, seed=0, workers=1, eval_size=1,
                          progress=False)
    return sorted((root / "mimic-cxr" / "files").rglob("*.dcm"))[0]
