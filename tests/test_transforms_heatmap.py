"""Gaze heatmaps: placement in the image frame, alignment through spatial transforms, maths, overlays."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Flipd, Resized, Rotate90d, Rotated
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from eclip_monai.errors import CXRDataError
from eclip_monai.transforms import (
    FixationsToHeatmap,
    FixationsToHeatmapd,
    HeatmapOverlay,
    HeatmapOverlayd,
    LoadCXRDicomd,
)
from eclip_monai.visualize import save_overlay_png

ROWS, COLS, X, Y = 40, 64, 44, 14  # non-square image, bright pixel at column X, row Y


def write_dot_dicom(path, rows=ROWS, cols=COLS, x=X, y=Y) -> str:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    pixels = np.full((rows, cols), 200, np.uint16)
    pixels[y, x] = 4000
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def loaded(tmp_path, **kwargs) -> dict:
    return LoadCXRDicomd("image")({"image": write_dot_dicom(tmp_path / "dot.dcm", **kwargs)})


def peak(t: torch.Tensor) -> tuple[int, int]:
    flat = int(torch.argmax(t[0]))
    return divmod(flat, t.shape[-1])


def with_heatmap(data: dict, fixations, sigma=2.0, **kwargs) -> dict:
    data = {**data, "fixations": np.asarray(fixations, dtype=float)}
    return FixationsToHeatmapd(sigma=sigma, sigma_unit="px", **kwargs)(data)


def test_single_fixation_peaks_at_row_y_column_x_of_loaded_non_square_image(tmp_path):
    d = with_heatmap(loaded(tmp_path), [[X, Y, 0.7]])
    heat = d["heatmap"]
    assert isinstance(heat, MetaTensor) and heat.shape == (1, ROWS, COLS) and heat.dtype == torch.float32
    assert peak(heat) == (Y, X) == peak(d["image"])
    assert heat.max() == 1.0
    assert heat.meta["filename_or_obj"] == d["image"].meta["filename_or_obj"]
    assert "fixations" in d  # the raw gaze is kept; the pipelines drop it


@pytest.mark.parametrize("size", [(20, 32), (80, 128), (30, 100)])
def test_heatmap_on_resized_image_peaks_at_the_scaled_location(tmp_path, size):
    d = Resized("image", size)(loaded(tmp_path))
    heat = with_heatmap(d, [[X, Y, 1.0]])["heatmap"]
    assert heat.shape == (1, *size)
    expected = ((Y + 0.5) * size[0] / ROWS - 0.5, (X + 0.5) * size[1] / COLS - 0.5)  # pixel-centre convention
    assert np.abs(np.subtract(peak(heat), expected)).max() <= 0.5


@pytest.mark.parametrize(
    "transform",
    [
        Flipd(["image", "heatmap"], spatial_axis=0),
        Flipd(["image", "heatmap"], spatial_axis=1),
        Rotate90d(["image", "heatmap"], k=1),
        Rotate90d(["image", "heatmap"], k=3),
        Resized(["image", "heatmap"], (60, 90), mode="bilinear"),
        Rotated(["image", "heatmap"], angle=0.4, keep_size=False),
        Rotated(["image", "heatmap"], angle=-1.1, keep_size=True),
    ],
    ids=["flip_rows", "flip_cols", "rot90", "rot270", "resize", "rotate", "rotate_keep_size"],
)
def test_heatmap_peak_stays_on_image_bright_pixel_through_spatial_transforms(tmp_path, transform):
    d = with_heatmap(loaded(tmp_path), [[X, Y, 1.0]])
    out = transform(d)
    assert out["image"].shape == out["heatmap"].shape
    assert peak(out["image"]) != (Y, X) and out["image"].max() > 0.2  # the spot moved and is still in view
    assert np.abs(np.subtract(peak(out["image"]), peak(out["heatmap"]))).max() <= 1


@pytest.fixture
def reference_heatmap(monkeypatch):
    """One full 2-D Gaussian per fixation, summed: the obvious loop the vectorised code must equal. It lives
    in ``scripts/bench_common.py`` because the data benchmark times the transform against it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
    return importlib.import_module("bench_common").reference_heatmap


def test_vectorised_heatmap_equals_per_fixation_reference(reference_heatmap):
    rng = np.random.default_rng(3)
    count, orig, out = 25, (90, 70), (45, 60)
    xs, ys = rng.uniform(-10, 80, count), rng.uniform(-10, 100, count)  # some off the 70x90 (WxH) image
    fix = np.column_stack([xs, ys, rng.uniform(0.05, 1.5, count)])
    ppd = rng.uniform(2, 6, (count, 2))
    lows = rng.uniform(0, 30, (count, 2))
    regions = np.column_stack([lows, lows + rng.uniform(20, 80, (count, 2))])
    render = FixationsToHeatmap(sigma=1.5, sigma_unit="deg")
    ours = render(fix, out, orig, pixels_per_degree=ppd, shown_region=regions)
    expected = reference_heatmap(fix, out, orig, 1.5 * ppd, regions)
    assert ours.shape == expected.shape == (1, *out)
    assert float((ours - expected).abs().max()) < 1e-5


def test_vectorised_heatmap_equals_per_fixation_reference_in_one_shown_region(reference_heatmap):
    rng = np.random.default_rng(0)
    fixations = np.stack([rng.uniform(-50, 700, 60), rng.uniform(-50, 900, 60), rng.uniform(0, 0.6, 60)], 1)
    fixations[0] = (300, 400, 0.5)  # at least one fixation inside the shown region
    ppd = rng.uniform(20, 40, (60, 2))
    shown = [40.0, 60.0, 600.0, 820.0]
    ours = FixationsToHeatmap(1.0, "deg")(fixations, (100, 80), (850, 650), ppd, shown)
    expected = reference_heatmap(fixations, (100, 80), (850, 650), ppd, shown)
    assert ours.shape == expected.shape == (1, 100, 80)
    assert float((ours - expected).abs().max()) <= 1e-5


def test_fixation_with_twice_the_duration_gives_twice_the_peak():
    heat = FixationsToHeatmap(sigma=2, sigma_unit="px")([[10, 10, 0.4], [50, 30, 0.8]], (40, 64))[0]
    assert heat[30, 50] == pytest.approx(1.0, abs=1e-6)
    assert heat[10, 10] == pytest.approx(0.5, abs=1e-6)


def test_sigma_in_degrees_is_degrees_times_pixels_per_degree():
    in_degrees = FixationsToHeatmap(1.5, "deg")([[50, 50, 1.0]], (101, 101), pixels_per_degree=4.0)
    in_pixels = FixationsToHeatmap(sigma=6.0, sigma_unit="px")([[50, 50, 1.0]], (101, 101))
    assert torch.allclose(in_degrees, in_pixels)
    assert in_pixels[0, 50, 56] == pytest.approx(np.exp(-0.5), rel=1e-5)  # one sigma to the right
    half = FixationsToHeatmap(sigma=6.0, sigma_unit="px")([[50, 50, 1.0]], (51, 51), original_size=(101, 101))
    assert half[0, 25, 28] == pytest.approx(np.exp(-0.5), rel=0.05)  # sigma halves with the image: 3 px


def test_degrees_need_pixels_per_degree_from_sample_or_default(tmp_path):
    data = {**loaded(tmp_path), "fixations": np.array([[X, Y, 1.0]])}
    with pytest.raises(CXRDataError) as info:
        FixationsToHeatmapd()(data)
    assert info.value.field == "pixels_per_degree" and "dot.dcm" in str(info.value)
    narrow = FixationsToHeatmapd(default_pixels_per_degree=2.0)(data)["heatmap"]
    wide = FixationsToHeatmapd(default_pixels_per_degree=2.0)({**data, "pixels_per_degree": 6.0})["heatmap"]
    assert peak(narrow) == peak(wide) == (Y, X)
    assert wide.sum() > 4 * narrow.sum()  # the sample's own value wins over the default


@pytest.mark.parametrize(
    "fixations",
    [np.zeros((0, 3)), [[X, Y, np.nan]], [[np.inf, Y, 1.0]], [[X, Y]], [[X, Y, -1.0]],
     [[-50, Y, 1], [X, 500, 1]], [[X, Y, 0.0]]],
    ids=["empty", "nan", "inf", "no_duration", "negative_duration", "all_off_image", "zero_duration"],
)
def test_bad_fixations_raise_cxr_data_error_naming_image_file(tmp_path, fixations):
    with pytest.raises(CXRDataError) as info:
        with_heatmap(loaded(tmp_path), fixations)
    assert info.value.field == "fixations" and info.value.path.endswith("dot.dcm")


def test_missing_fixations_raise_unless_allowed(tmp_path):
    with pytest.raises(CXRDataError, match="dot.dcm"):
        FixationsToHeatmapd(sigma_unit="px")(loaded(tmp_path))
    assert "heatmap" not in FixationsToHeatmapd(sigma_unit="px", allow_missing_keys=True)(loaded(tmp_path))


def test_off_image_fixations_are_dropped_entirely():
    render = FixationsToHeatmap(sigma=3, sigma_unit="px")
    inside = render([[5, 5, 1.0]], (40, 64))
    with_outside = render([[5, 5, 1.0], [-2, 5, 5.0], [5, 40, 5.0]], (40, 64))  # centres just off left/bottom
    assert torch.equal(inside, with_outside)


def test_shown_region_clips_heatmap_and_drops_fixations_outside_it():
    render = FixationsToHeatmap(sigma=4, sigma_unit="px")
    heat = render([[20, 15, 1.0], [55, 35, 3.0]], (40, 64), shown_region=[10, 5, 30, 25])[0]
    assert peak(heat[None]) == (15, 20)
    assert heat[:5].sum() == heat[26:].sum() == heat[:, :10].sum() == heat[:, 31:].sum() == 0
    assert heat[5, 20] > 0 and heat[25, 20] > 0  # edges of the region are shown


def test_heatmap_is_float_in_unit_range_not_quantised():
    heat = FixationsToHeatmap(sigma=5, sigma_unit="px")([[30, 20, 0.3], [10, 10, 0.1]], (40, 64))
    assert heat.dtype == torch.float32 and heat.min() >= 0 and heat.max() == 1
    assert ((heat > 0.01) & (heat < 0.99)).sum() > 100


def test_multiply_overlay_broadcasts_heatmap_over_channels():
    torch.manual_seed(0)
    image, heat = torch.rand(3, 8, 12), torch.rand(1, 8, 12)
    out = HeatmapOverlay("multiply")(image, heat)
    assert torch.allclose(out, image * heat.expand(3, -1, -1))


def test_color_overlay_shows_image_where_heat_is_zero_and_colour_where_high():
    image = torch.linspace(0, 1, 8 * 12).reshape(1, 8, 12)
    heat = torch.zeros(1, 8, 12)
    heat[0, 2:4, 5:7] = 1.0
    rgb = HeatmapOverlay("color", alpha=0.6)(image, heat)
    assert rgb.shape == (3, 8, 12) and rgb.min() >= 0 and rgb.max() <= 1
    cold = heat[0] == 0
    assert torch.allclose(rgb[:, cold], image[0][cold].expand(3, -1))  # gray shows through
    assert (rgb[:, 2:4, 5:7].std(0) > 0.1).all()  # hot pixels are coloured, not gray


def test_overlay_rejects_heatmap_of_another_shape():
    image = MetaTensor(torch.rand(1, 8, 12), meta={"filename_or_obj": "a.dcm"})
    with pytest.raises(CXRDataError, match="a.dcm") as info:
        HeatmapOverlay()(image, torch.rand(1, 12, 8))
    assert info.value.field == "heatmap"


def test_overlay_dictionary_version_writes_output_key(tmp_path):
    d = with_heatmap(loaded(tmp_path), [[X, Y, 1.0]])
    out = HeatmapOverlayd("image", "heatmap", "expert_query")(d)
    assert torch.allclose(out["expert_query"], d["image"] * d["heatmap"])


def _colour_pixels(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb.max(-1) - rgb.min(-1)) > 30).sum())


def test_save_overlay_png_draws_heatmap_colour_and_fixation_dots(tmp_path):
    image = torch.linspace(0, 1, 40 * 64).reshape(1, 40, 64)
    heat = FixationsToHeatmap(sigma=3, sigma_unit="px")([[X, Y, 1.0]], (40, 64))
    plain = save_overlay_png(image, torch.zeros(1, 40, 64), tmp_path / "plain.png")
    hot = save_overlay_png(image, heat, tmp_path / "hot.png", title="gaze")
    dots = save_overlay_png(image, torch.zeros(1, 40, 64), tmp_path / "dots.png",
                            fixations=[[X, Y, 1.0], [5, 5, 0.2]])
    assert Image.open(plain).format == "PNG"
    assert Image.open(hot).size[1] > Image.open(plain).size[1]  # room for the title
    assert _colour_pixels(plain) == 0
    assert _colour_pixels(hot) > 50 and _colour_pixels(dots) > 10


def test_a_misconfigured_pipeline_stops_the_run_instead_of_skipping_every_sample():
    from monai.data import Dataset

    from eclip_monai.data.robust import SkipBadSamples

    sample = {"image": torch.zeros(1, 32, 32), "fixations": np.array([[10.0, 12.0, 0.5]])}
    typo = FixationsToHeatmapd(ref_key="imgae", sigma=2.0, sigma_unit="px")
    with pytest.raises(RuntimeError) as failure:  # MONAI's apply_transform wraps what the transform raised
        SkipBadSamples(Dataset([sample], typo))[0]
    assert isinstance(failure.value.__cause__, KeyError)
    assert "imgae: the reference image that sizes the heatmap is not in the sample" in str(failure.value.__cause__)
    bad_fixations = {**sample, "fixations": np.array([[np.nan, 1.0, 0.5]])}  # one sample's fault: skipped
    assert SkipBadSamples(Dataset([bad_fixations], FixationsToHeatmapd(sigma=2.0, sigma_unit="px")))[0] is None
