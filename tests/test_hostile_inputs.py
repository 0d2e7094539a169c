"""Hostile inputs, fast slice: one file of every family of ``scripts/hostile_corpus.py`` through the
training, evaluation, inference, gaze and report readers, each in a forked worker with a time and memory
limit, must load or fail with a ``CXRDataError`` naming the file; never another exception, a signal, or a
hang. The full corpus (and the MONAI Label upload path) is ``scripts/hostile_inputs.py``; uploads of a few
corpus files to a real server are in ``test_server_load.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

from eclip_monai.errors import CXRDataError
from eclip_monai.transforms import LoadCXRDicom
from eclip_monai.transforms.io import LoadCXRImage

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("hostile_corpus"), importlib.import_module("hostile_inputs")
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def corpus(scripts, tmp_path_factory) -> tuple[Path, list]:
    hostile_corpus, _ = scripts
    root = tmp_path_factory.mktemp("hostile") / "corpus"
    return root, hostile_corpus.generate(root, seed=0, count=len(hostile_corpus.MUTATIONS), big_rows=20_000)


def _one_per_family(cases):
    seen, picked = set(), []
    for case in cases:
        if (case.kind, case.family) not in seen:
            seen.add((case.kind, case.family))
            picked.append(case)
    return picked


def test_every_family_through_every_entry_point_loads_or_fails_cleanly_naming_the_file(scripts, corpus):
    _, harness = scripts
    root, cases = corpus
    picked = _one_per_family(cases)
    entries = harness.Entries()
    jobs = [(entry, case, root / case.path) for case in picked for entry in harness.ENTRIES[case.kind]]
    results = harness.run_forked(entries, jobs, timeout=60, memory_limit=3 * 2**30, workers=2,
                                 progress=lambda result: None)
    assert len(results) == len(jobs)
    bad = [r for r in results if r.outcome not in ("loaded", "clean")]
    assert [f"{r.case} ({r.entry}): {r.outcome}: {r.detail}" for r in bad] == []
    outcome = {(r.family, r.entry): r for r in results}
    # the well-formed ones still load everywhere they belong; the hostile ones are refused, not half-read
    for family, entry in (("ok", "gaze"), ("ok", "report"), ("png_ok", "evaluation"),
                          ("nifti_ok", "inference"), ("ct", "train"), ("ct", "inference")):
        assert outcome[family, entry].outcome == "loaded", outcome[family, entry]
    for family in ("bomb_dims", "deflate_bomb", "oversized", "png_bomb", "jpeg_bomb", "nifti_bomb",
                   "bmp_bomb"):
        for entry in ("evaluation", "inference"):
            assert outcome[family, entry].outcome == "clean", outcome[family, entry]
    assert "refused before" in outcome["deflate_bomb", "inference"].detail
    assert outcome["not_utf8", "gaze"].outcome == "clean"  # a CSV that is not UTF-8 is named, not leaked


def test_the_corpus_is_reproducible_from_its_seed(scripts, corpus, tmp_path):
    hostile_corpus, _ = scripts
    root, cases = corpus
    again = hostile_corpus.generate(tmp_path / "again", seed=0, count=len(hostile_corpus.MUTATIONS),
                                    big_rows=20_000)
    assert again == cases

    def digest(base: Path, case) -> str:
        path = base / case.path
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()

    assert [digest(root, c) for c in cases] == [digest(tmp_path / "again", c) for c in cases]
    other = hostile_corpus.generate(tmp_path / "other", seed=1, count=len(hostile_corpus.MUTATIONS),
                                    big_rows=10)
    assert [digest(root, c) for c in cases[:13]] != [digest(tmp_path / "other", c) for c in other[:13]]


def test_a_declared_size_above_the_cap_is_refused_before_any_pixel_is_decoded(phantom_dicom, monkeypatch):
    import pydicom

    assert LoadCXRDicom()(phantom_dicom).shape[0] == 1  # within the default caps

    def no_decoding(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoding))
    with pytest.raises(CXRDataError, match="refused before decoding") as error:
        LoadCXRDicom(max_pixels=1000)(phantom_dicom)
    assert error.value.path == str(phantom_dicom) and error.value.field == "Rows"
    with pytest.raises(CXRDataError, match="bytes of pixel data"):
        LoadCXRDicom(max_pixel_bytes=1000)(phantom_dicom)


def test_png_and_nifti_headers_share_the_caps(tmp_path):
    import nibabel
    import numpy as np
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((2, 400), np.uint8)).save(strip)
    with pytest.raises(CXRDataError, match="longer side") as error:
        LoadCXRImage()(strip)
    assert error.value.path == str(strip)
    volume = tmp_path / "volume.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((64, 64, 8), np.float32), np.eye(4)), volume)
    with pytest.raises(CXRDataError, match="refused before decoding"):
        LoadCXRImage(max_pixels=64 * 64 * 4)(volume)
    ordinary = tmp_path / "ordinary.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(ordinary)
    assert LoadCXRImage()(ordinary).shape == (1, 40, 50)
