"""LoadCXRDicom: display chain (modality LUT, VOI, MONOCHROME1), axes, meta and clear errors on bad files."""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian, generate_uid

from eclip_monai.errors import CXRDataError
from eclip_monai.transforms import LoadCXRDicom, LoadCXRDicomd

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
JPEG2000_PART2_MC = "1.2.840.10008.1.2.4.92"  # no decoder exists for it


def write_dicom(path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits_stored=16, compress=None,
                **tags) -> str:
    """A single-frame DX file with the given stored values and extra tags (keyword=value)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.set_pixel_data(np.asarray(pixels, dtype=np.uint16), photometric, bits_stored)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def anatomy(rows=48, cols=80) -> np.ndarray:
    """A smooth 'chest' in [0, 1] with a few blobs; non-square so axis mix-ups show."""
    r, c = np.mgrid[0:rows, 0:cols]
    body = 0.3 + 0.4 * np.exp(-(((r - rows / 2) / (rows / 2.5)) ** 2 + ((c - cols / 2) / (cols / 3)) ** 2))
    rng = np.random.default_rng(0)
    for _ in range(4):
        y, x = rng.uniform(0, rows), rng.uniform(0, cols)
        body += 0.25 * np.exp(-((r - y) ** 2 + (c - x) ** 2) / 12.0)
    return np.clip(body, 0, 1)


def voi_lut(table: np.ndarray, first_mapped: int, bits: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(table), first_mapped, bits])  # LUTDescriptor
    item.add_new(0x00283006, "US", [int(v) for v in table])  # LUTData
    return item


def pydicom_corpus() -> list[str]:
    files = set(get_testdata_files())
    root = os.path.dirname(get_testdata_files("MR_small.dcm")[0])
    files |= set(glob.glob(os.path.join(root, "**", "*"), recursive=True))
    return sorted(f for f in files if os.path.isfile(f))


def test_every_pydicom_test_file_loads_as_unit_image_or_raises_cxr_data_error():
    load, loaded, refused, leaked = LoadCXRDicom(), {}, {}, []
    start = time.perf_counter()
    for path in pydicom_corpus():
        try:
            image = load(path)
        except CXRDataError as err:
            assert path in str(err)
            refused[os.path.basename(path)] = err.field
            continue
        except Exception as exc:  # noqa: BLE001 - the point is that nothing else escapes
            leaked.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        ok = (image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 1
              and torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1)
        loaded[os.path.basename(path)] = ok
    assert leaked == []
    assert all(loaded.values()), [name for name, ok in loaded.items() if not ok]
    assert time.perf_counter() - start < 60
    # one file per supported transfer syntax family decodes
    assert {"MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "MR_small_RLE.dcm",
            "JPGExtended.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm",
            "MR_small_jp2klossless.dcm", "693_J2KI.dcm"} <= set(loaded)
    assert refused["SC_rgb_small_odd.dcm"] == "SamplesPerPixel"
    assert refused["examples_palette.dcm"] == "PhotometricInterpretation"
    assert refused["rtdose.dcm"] == "NumberOfFrames"
    assert refused["MR_truncated.dcm"] == "PixelData"
    assert refused["badVR.dcm"] == "NumberOfFrames"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm"])
def test_lossless_encodings_of_one_image_load_identically(name):
    reference = LoadCXRDicom()(get_testdata_files("MR_small.dcm")[0])
    assert torch.allclose(LoadCXRDicom()(get_testdata_files(name)[0]), reference, atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_files_we_compress_load_like_the_uncompressed_original(tmp_path, syntax):
    stored = np.round(anatomy() * 4095)
    plain = LoadCXRDicom()(write_dicom(tmp_path / "plain.dcm", stored, bits_stored=12))
    packed = LoadCXRDicom()(write_dicom(tmp_path / "packed.dcm", stored, bits_stored=12, compress=syntax))
    assert torch.allclose(packed, plain, atol=1e-6)


@pytest.mark.parametrize("voi", ["none", "window", "multi_window", "voi_lut"])
def test_monochrome1_and_monochrome2_of_same_anatomy_load_identically(tmp_path, voi):
    top = 4095
    m2 = np.round(anatomy() * top)
    m1 = top - m2  # MONOCHROME1 stores max - value: low = bright
    tags2, tags1 = {}, {}
    if voi in ("window", "multi_window"):
        center, width = 1800.0, 2500.0
        # DICOM LINEAR windowing is centred on c - 0.5, so the mirrored window's centre is top + 1 - c
        tags2 = {"WindowCenter": center, "WindowWidth": width}
        tags1 = {"WindowCenter": top + 1 - center, "WindowWidth": width}
        if voi == "multi_window":
            tags2 = {k: [v, 40.0] for k, v in tags2.items()}
            tags1 = {k: [v, 40.0] for k, v in tags1.items()}
    if voi == "voi_lut":
        lut2 = np.round(top / (1 + np.exp(-(np.arange(top + 1) - 2000) / 400)))
        lut1 = top - lut2[::-1]  # the display after inversion must match
        tags2 = {"VOILUTSequence": [voi_lut(lut2, 0, 12)]}
        tags1 = {"VOILUTSequence": [voi_lut(lut1, 0, 12)]}
    image2 = LoadCXRDicom()(write_dicom(tmp_path / "m2.dcm", m2, bits_stored=12, **tags2))
    image1 = LoadCXRDicom()(write_dicom(tmp_path / "m1.dcm", m1, photometric="MONOCHROME1", bits_stored=12,
                                        **tags1))
    assert image1.meta["voi"] == image2.meta["voi"] == {"none": "range", "voi_lut": "lut"}.get(voi, "window")
    assert torch.allclose(image1, image2, atol=1e-6)
    assert image2.std() > 0.05  # a real image, not two equal blanks


def test_first_of_multiple_windows_is_used(tmp_path):
    stored = np.round(anatomy() * 4095)
    single = LoadCXRDicom()(write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, WindowCenter=1500.0,
                                        WindowWidth=1000.0))
    multi = LoadCXRDicom()(write_dicom(tmp_path / "b.dcm", stored, bits_stored=12,
                                       WindowCenter=[1500.0, 3000.0], WindowWidth=[1000.0, 200.0]))
    assert torch.equal(single, multi)


@pytest.mark.parametrize("windowed", [False, True])
def test_12_bit_and_16_bit_versions_of_same_anatomy_load_to_same_image(tmp_path, windowed):
    body = anatomy()
    stored12, stored16 = np.round(body * 4095), np.round(body * 65535)
    scale = 65535 / 4095
    tags12 = {"WindowCenter": 2000.0, "WindowWidth": 2600.0} if windowed else {}
    tags16 = {k: v * scale for k, v in tags12.items()}
    image12 = LoadCXRDicom()(write_dicom(tmp_path / "b12.dcm", stored12, bits_stored=12, **tags12))
    image16 = LoadCXRDicom()(write_dicom(tmp_path / "b16.dcm", stored16, bits_stored=16, **tags16))
    assert image12.meta["bits_stored"] == 12 and image16.meta["bits_stored"] == 16
    assert torch.allclose(image12, image16, atol=2e-3)


def test_bits_above_bits_stored_are_ignored(tmp_path):
    stored = np.round(anatomy() * 4095).astype(np.uint16)
    clean = LoadCXRDicom()(write_dicom(tmp_path / "clean.dcm", stored, bits_stored=12))
    noisy_path = write_dicom(tmp_path / "noisy.dcm", stored, bits_stored=12)
    ds = pydicom.dcmread(noisy_path)
    ds.PixelData = (stored | 0xA000).astype(np.uint16).tobytes()  # junk in the 4 unused high bits
    ds.save_as(noisy_path)
    assert torch.equal(LoadCXRDicom()(noisy_path), clean)


def test_bright_pixel_at_row_r_col_c_is_at_0_r_c_of_non_square_image(tmp_path):
    pixels = np.zeros((30, 50))
    pixels[7, 41] = 4000
    image = LoadCXRDicom()(write_dicom(tmp_path / "dot.dcm", pixels, bits_stored=12))
    assert image.shape == (1, 30, 50)
    assert image[0, 7, 41] == 1.0 and image.sum() == 1.0
    assert tuple(image.meta["spatial_shape"]) == (30, 50)


def test_rescale_slope_and_intercept_are_applied_before_the_window(tmp_path):
    stored = np.round(anatomy() * 1000)
    window = {"WindowCenter": 1100.0, "WindowWidth": 1200.0}
    rescaled = LoadCXRDicom()(write_dicom(tmp_path / "r.dcm", stored, RescaleSlope=2, RescaleIntercept=100,
                                          **window))
    direct = LoadCXRDicom()(write_dicom(tmp_path / "d.dcm", 2 * stored + 100, **window))
    assert torch.allclose(rescaled, direct, atol=1e-6)


def test_modality_lut_sequence_is_applied(tmp_path):
    stored = np.round(anatomy() * 4095)
    item = voi_lut(4095 - np.arange(4096), 0, 16)  # same item layout as a Modality LUT: descriptor + data
    item.ModalityLUTType = "US"
    mapped = LoadCXRDicom()(write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12,
                                        ModalityLUTSequence=[item]))
    direct = LoadCXRDicom()(write_dicom(tmp_path / "direct.dcm", 4095 - stored, bits_stored=12))
    assert torch.allclose(mapped, direct, atol=1e-6)


@pytest.mark.parametrize(
    "tags, spacing, source",
    [
        ({"ImagerPixelSpacing": [0.2, 0.15], "PixelSpacing": [0.5, 0.5]}, (0.2, 0.15), "ImagerPixelSpacing"),
        ({"PixelSpacing": [0.5, 0.4]}, (0.5, 0.4), "PixelSpacing"),
        ({}, (1.0, 1.0), "default"),
    ],
)
def test_meta_records_shape_spacing_view_and_photometric(tmp_path, tags, spacing, source):
    path = write_dicom(tmp_path / "m.dcm", np.round(anatomy() * 4095), bits_stored=12, **tags)
    image = LoadCXRDicom()(path)
    assert isinstance(image, MetaTensor)
    meta = image.meta
    assert meta["filename_or_obj"] == path
    assert tuple(meta["spatial_shape"]) == (48, 80)
    assert tuple(meta["spacing"]) == pytest.approx(spacing) and meta["spacing_source"] == source
    described = (meta["view"], meta["photometric"], meta["bits_stored"], meta["modality"])
    assert described == ("PA", "MONOCHROME2", 12, "DX")
    assert torch.allclose(image.affine.diagonal()[:2].float(), torch.tensor(spacing))


def _no_pixel_data(path):
    write_dicom(path, np.zeros((4, 4)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)


def _multi_frame(path):
    write_dicom(path, np.zeros((4, 4)))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = np.zeros((2, 4, 4), np.uint16).tobytes()
    ds.save_as(path)


def _rgb(path):
    ds = pydicom.dcmread(write_dicom(path, np.zeros((4, 4))))
    ds.set_pixel_data(np.zeros((4, 4, 3), np.uint8), "RGB", 8)
    ds.save_as(path)


def _palette(path):
    write_dicom(path, np.zeros((4, 4)))
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(path)


def _short_pixel_data(path):
    write_dicom(path, np.zeros((40, 40)))
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(path)


def _truncated(path):
    write_dicom(path, np.round(anatomy() * 4095))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def _no_decoder(path):
    write_dicom(path, np.zeros((4, 4)))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000_PART2_MC
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(12)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)


def _not_dicom(path):
    open(path, "w").write("FINDINGS: this is a report, not an image.\n")


@pytest.mark.parametrize(
    "make, field",
    [
        (_not_dicom, None),
        (_truncated, "PixelData"),
        (_no_pixel_data, "PixelData"),
        (_multi_frame, "NumberOfFrames"),
        (_rgb, "SamplesPerPixel"),
        (_palette, "PhotometricInterpretation"),
        (_short_pixel_data, "PixelData"),
        (_no_decoder, "TransferSyntaxUID"),
    ],
)
def test_bad_files_raise_cxr_data_error_naming_file_and_field(tmp_path, make, field):
    path = str(tmp_path / "bad.dcm")
    make(path)
    with pytest.raises(CXRDataError) as info:
        LoadCXRDicom()(path)
    assert info.value.field == field
    assert path in str(info.value) and (field or "DICOM") in str(info.value)


@pytest.mark.parametrize(
    "photometric, tags, expected",
    [
        ("MONOCHROME2", {}, 0.0),
        ("MONOCHROME1", {}, 1.0),
        ("MONOCHROME2", {"WindowCenter": 1000.0, "WindowWidth": 0.0}, 0.0),
        ("MONOCHROME2", {"WindowCenter": 1000.0, "WindowWidth": -5.0, "VOILUTFunction": "SIGMOID"}, 0.0),
    ],
)
def test_constant_image_and_degenerate_window_load_without_crashing(tmp_path, photometric, tags, expected):
    flat = np.full((8, 12), 1000)
    image = LoadCXRDicom()(write_dicom(tmp_path / "flat.dcm", flat, photometric=photometric, **tags))
    assert image.meta["voi"] == "range"
    assert torch.all(image == expected)


def test_degenerate_window_falls_back_to_data_range(tmp_path):
    stored = np.round(anatomy() * 4095)
    plain = LoadCXRDicom()(write_dicom(tmp_path / "a.dcm", stored))
    bad = LoadCXRDicom()(write_dicom(tmp_path / "b.dcm", stored, WindowCenter=100.0, WindowWidth=0.0))
    assert torch.equal(plain, bad) and plain.min() == 0 and plain.max() == 1


def test_dictionary_version_replaces_path_with_image_and_keeps_other_keys(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", np.round(anatomy() * 4095), bits_stored=12)
    out = LoadCXRDicomd("image")({"image": path, "report": "FINDINGS: clear."})
    assert out["report"] == "FINDINGS: clear."
    assert torch.equal(out["image"], LoadCXRDicom()(path))
