"""Preprocess once: shards hold what the live chain gives, survive kills and reruns, and skip bad files; the
phantom's full-size option writes MIMIC-sized, 12-bit, compressed DICOMs that decode."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.data.shards import MANIFEST, ShardSet, collect_items, write_shards
from eclip_monai.errors import CXRDataError
from eclip_monai.transforms import LoadCXRDicom
from eclip_monai.transforms.pipelines import eval_transforms, shard_transforms

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SIZE = 48
PER_SHARD = 3
MEAN, STD = 0.58, 0.26  # eval_transforms' defaults, undone to compare with the stored [0, 1] image


def shard_transform():
    """What scripts/preprocess_shards.py stores: the eval chain without its normalisation."""
    return shard_transforms(SIZE)


def write(items, out, **options):
    options = {"image_size": SIZE, "images_per_shard": PER_SHARD, "progress": False,
               "settings": {"splits": ["train", "validate", "test"]}, **options}
    return write_shards(items, out, options.pop("transform", shard_transform()), **options)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return ensure_phantom(tmp_path_factory.mktemp("phantom"), studies=12, seed=0, eval_size=0, workers=1,
                          progress=False, egd_fraction=0.4, reflacx_fraction=0.4)


@pytest.fixture(scope="module")
def items(world) -> list[dict]:
    return collect_items(world / "mimic-cxr", world / "egd-cxr", world / "reflacx", views=None)


@pytest.fixture(scope="module")
def shards(items, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shards")
    return out, write(items, out)


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*"))}


def _ids(root: Path) -> list[str]:
    return [json.loads(line)["dicom_id"] for p in sorted(root.glob("shard-*.jsonl"))
            for line in p.read_text().splitlines()]


def test_shard_images_equal_the_live_eval_chain_within_quantisation(items, shards):
    out, result = shards
    data = ShardSet(out, verify=True)
    assert len(data) == len(items) == result["manifest"]["images"] and not result["manifest"]["skipped"]
    assert data.image_size == SIZE and sum(data.shard_sizes) == len(data)
    by_id = {item["dicom_id"]: item for item in items}
    live = eval_transforms(SIZE)
    worst = 0.0
    for index in range(len(data)):
        shard, row = data.locate(index)
        stored = data.read(shard, row)
        assert stored["image"].dtype == np.float32 and stored["image"].shape == (1, SIZE, SIZE)
        expected = live({"image": by_id[stored["dicom_id"]]["image"]})["image"].numpy() * STD + MEAN
        worst = max(worst, float(np.abs(stored["image"] - expected).max()))
    assert worst <= 0.5 / 255 + 1e-5, worst
    assert data.locate(len(data) - 1) == (len(data.shard_sizes) - 1, data.shard_sizes[-1] - 1)
    with pytest.raises(IndexError):
        data.locate(len(data))


def test_records_carry_report_labels_and_fixations_in_shard_pixels(items, shards):
    data = ShardSet(shards[0])
    by_id = {item["dicom_id"]: item for item in items}
    with_gaze = 0
    for shard in range(len(data.shard_sizes)):
        splits = {record["split"] for record in data.records(shard)}
        assert len(splits) == 1  # a shard never mixes splits
        for row, record in enumerate(data.records(shard)):
            item = by_id[record["dicom_id"]]
            assert record["report"] == item["report"] and record["view"] == item["view"]
            assert record["labels"] == [None if np.isnan(v) else float(v) for v in item["labels"]]
            if "fixations" not in item:
                assert "fixations" not in record
                continue
            with_gaze += 1
            rows, cols = record["original_size"]
            assert (rows, cols) == tuple(pydicom.dcmread(item["image"], stop_before_pixels=True)[t].value
                                         for t in ("Rows", "Columns"))
            # shortest side to SIZE, then the centre crop, with MONAI's pixel-centre convention
            factor = SIZE / min(rows, cols)
            resized = (max(SIZE, round(rows * factor)), max(SIZE, round(cols * factor)))
            top, left = (n // 2 - SIZE // 2 for n in resized)
            x, y, duration = np.asarray(item["fixations"], float).T
            expected = np.stack([(x + 0.5) * resized[1] / cols - 0.5 - left,
                                 (y + 0.5) * resized[0] / rows - 0.5 - top, duration], axis=1)
            fixations = data.read(shard, row)["fixations"]
            assert fixations.dtype == np.float32 and fixations.shape == expected.shape
            np.testing.assert_allclose(fixations, expected, atol=2e-3)
            assert record["pixels_per_degree"] == pytest.approx(item["pixels_per_degree"] * factor, rel=0.01)
            assert record["gaze_source"] == item["gaze_source"]
    assert with_gaze >= 3


def test_rerun_checks_every_shard_and_rewrites_none(items, shards):
    out, first = shards
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    again = write(items, out)
    assert again["written"] == [] and again["reused"] == [e["name"] for e in first["manifest"]["shards"]]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before
    assert again["manifest"] == first["manifest"]


def test_corrupted_shard_is_detected_by_verify_and_rewritten_by_a_rerun(items, shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shards[0], out)
    original = _files(out)
    victim = out / "shard-00001.npy"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(CXRDataError, match="sha256") as error:
        ShardSet(out, verify=True)
    assert error.value.path == str(victim)
    again = write(items, out)
    assert again["written"] == ["shard-00001"]
    ShardSet(out, verify=True)
    assert _files(out) == original


class KillAt:
    """The shard transform, except that the process SIGKILLs itself on the ``at``-th image (mid-shard)."""

    def __init__(self, at: int):
        self.at, self.calls, self.transform = at, 0, shard_transform()

    def __call__(self, data):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.transform(data)


def _killed_run(items, out):
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool
    write(items, out, transform=KillAt(2 * PER_SHARD + 2))


def test_killed_run_resumes_to_the_same_set_as_an_uninterrupted_run(items, shards, tmp_path):
    out = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(target=_killed_run, args=(items, out))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
    assert child.exitcode == -signal.SIGKILL
    partial = json.loads((out / MANIFEST).read_text())
    assert not partial["complete"]
    assert [entry["name"] for entry in partial["shards"]] == ["shard-00000", "shard-00001"]
    resumed = write(items, out)
    assert resumed["reused"] == ["shard-00000", "shard-00001"]
    assert resumed["manifest"] == shards[1]["manifest"] and resumed["manifest"]["complete"]
    assert _files(out) == _files(shards[0])
    ids = _ids(out)
    assert sorted(ids) == sorted(item["dicom_id"] for item in items)  # none lost, none twice


def test_command_line_writes_the_set_of_a_phantom_world(world, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    from preprocess_shards import main

    argv = ["--phantom", str(world), "--out", str(tmp_path), "--image-size", str(SIZE), "--images-per-shard",
            str(PER_SHARD), "--all-views", "--no-progress"]
    summary = main(argv)
    data = ShardSet(tmp_path, verify=True)
    assert summary["images"] == len(data) == len(collect_items(world / "mimic-cxr", views=None))
    assert data.manifest["settings"]["mimic_root"] == str(world / "mimic-cxr")
    assert data.manifest["settings"]["image_size"] == SIZE and data.manifest["complete"]
    assert main(argv)["written"] == 0  # a rerun only checks
    assert '"reused"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])


def test_parallel_workers_write_the_same_set(items, shards, tmp_path):
    result = write(items, tmp_path, workers=2, start_method="fork")
    assert result["manifest"] == shards[1]["manifest"]
    assert _files(tmp_path) == _files(shards[0])


def test_corrupt_and_missing_dicoms_are_skipped_and_listed(items, tmp_path):
    broken = [dict(item) for item in items]
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(items[1]["image"]).read_bytes()[:4000])
    broken[1]["image"], broken[4]["image"] = str(truncated), str(tmp_path / "gone.dcm")
    result = write(broken, tmp_path / "shards")
    skipped = result["manifest"]["skipped"]
    assert sorted(s["path"] for s in skipped) == sorted([str(truncated), str(tmp_path / "gone.dcm")])
    assert all(s["reason"] for s in skipped)
    data = ShardSet(tmp_path / "shards", verify=True)
    assert len(data) == len(items) - 2
    assert sorted(_ids(tmp_path / "shards")) == sorted(item["dicom_id"] for i, item in enumerate(items)
                                                         if i not in (1, 4))


@pytest.mark.parametrize("syntax, upscale, bits", [("rle", 7, 12), ("jpeg2000", 2, 12)])
def test_full_size_option_writes_the_requested_dicoms_and_they_decode(world, tmp_path, syntax, upscale, bits):
    options = dict(studies=1, seed=3, eval_size=0, workers=1, progress=False, egd_fraction=1.0,
                   reflacx_fraction=0.0)
    small = ensure_phantom(tmp_path / "small", **options)
    large = ensure_phantom(tmp_path / "large", upscale=upscale, bits_stored=bits, transfer_syntax=syntax,
                           **options)
    arguments = json.loads((large / "phantom_done.json").read_text())["arguments"]
    assert {k: arguments[k] for k in ("upscale", "bits_stored", "transfer_syntax")} == \
        {"upscale": upscale, "bits_stored": bits, "transfer_syntax": syntax}
    default = json.loads((world / "phantom_done.json").read_text())["arguments"]
    assert not {"upscale", "bits_stored", "transfer_syntax"} & set(default)  # the default world's record

    small_dcm = sorted((small / "mimic-cxr").rglob("*.dcm"))[0]
    large_dcm = large / small_dcm.relative_to(small)
    header = pydicom.dcmread(large_dcm, stop_before_pixels=True)
    drawn = pydicom.dcmread(small_dcm, stop_before_pixels=True)
    rows, cols = drawn.Rows, drawn.Columns
    assert (header.Rows, header.Columns) == (rows * upscale, cols * upscale)
    assert (header.BitsStored, header.BitsAllocated) == (bits, 16)
    assert header.file_meta.TransferSyntaxUID == {"rle": pydicom.uid.RLELossless,
                                                  "jpeg2000": pydicom.uid.JPEG2000Lossless}[syntax]
    image = LoadCXRDicom()(large_dcm)  # decodes, with VOI, into the same picture as the drawn film
    assert image.shape == (1, rows * upscale, cols * upscale)
    reduced = torch.nn.functional.avg_pool2d(image[None].as_tensor(), upscale)[0]
    assert float((reduced - LoadCXRDicom()(small_dcm).as_tensor()).abs().mean()) < 0.02

    gaze = [collect_items(root / "mimic-cxr", root / "egd-cxr")[0]["fixations"] for root in (small, large)]
    np.testing.assert_allclose(gaze[1][:, :2], (gaze[0][:, :2] + 0.5) * upscale - 0.5, atol=0.05 * upscale)
