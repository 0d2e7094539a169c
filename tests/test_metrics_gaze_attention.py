"""Gaze attention: saliency of image–prompt similarity, scored against finding regions and radiologist gaze."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from torch import nn

from eclip_monai.data.phantom import generate_phantom
from eclip_monai.data.phantom.generate import TRUTH_FILE
from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.gaze_attention import (
    MASK_KEY,
    NAMES_KEY,
    FindingMasks,
    evaluate_gaze_attention,
    gaze_attention_datalist,
    gaze_attention_transforms,
    plot_gaze_attention,
)
from eclip_monai.metrics import GazeAttention
from eclip_monai.metrics.gaze_attention import (
    ellipse_mask,
    gaze_auc,
    gaze_positive,
    mass_inside,
    ncc,
    nss,
    pointing_game,
    similarity_saliency,
)
from eclip_monai.networks import build_eclip
from eclip_monai.transforms.pipelines import eval_transforms
from eclip_monai.networks import build_tokenizer

SIZE = 64


def _blob(row: float, col: float, sigma: float = 4.0, size: int = SIZE) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))[None].float()


def _ellipse(x, y, rx, ry, angle=0.0, size=SIZE) -> torch.Tensor:
    return torch.from_numpy(ellipse_mask(x, y, rx, ry, (size, size), angle))[None]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small forward passes: one thread is steadier than several competing for a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_network():
    torch.manual_seed(0)
    return build_eclip(model_name="eclip-tiny-cnn", image_size=SIZE, experts=False).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, studies=12, seed=0, workers=1, egd_fraction=0.5, reflacx_fraction=0.5, eval_size=0,
                     progress=False)
    return root


# --- scores against finding regions -------------------------------------------------------------------------

def test_saliency_peaked_inside_the_ellipse_points_and_puts_its_mass_there_and_outside_does_not():
    mask = torch.stack([_ellipse(20, 30, 8, 6)] * 2)  # (2, 1, H, W), x = column 20, y = row 30
    inside, outside = _blob(30, 20, sigma=2.0), _blob(50, 50, sigma=2.0)
    saliency = torch.stack([inside, outside])
    assert pointing_game(saliency, mask).tolist() == [1.0, 0.0]
    mass = mass_inside(saliency, mask)
    assert mass[0] > 0.95 and mass[1] < 0.01
    # negative saliency does not count as mass: pushing the outside of the first map negative changes nothing
    pushed = torch.where(mask[0].bool(), inside, inside - 5.0)[None]
    assert mass_inside(pushed, mask[:1]).item() == pytest.approx(1.0)


def test_uniform_saliency_gets_chance_on_every_score():
    mask, gaze = _ellipse(20, 30, 8, 6)[None], (_blob(30, 20) + 0.5 * _blob(10, 50))[None]
    uniform = torch.full((1, 1, SIZE, SIZE), 0.3)
    area = mask.float().mean().item()
    assert pointing_game(uniform, mask).item() == pytest.approx(area)  # ties are shared, not won
    assert mass_inside(uniform, mask).item() == pytest.approx(area)
    assert mass_inside(torch.zeros_like(uniform), mask).item() == pytest.approx(area)
    assert nss(uniform, gaze).item() == 0.0
    assert ncc(uniform, gaze).item() == 0.0
    assert gaze_auc(uniform, gaze).item() == pytest.approx(0.5)


def test_scores_without_truth_are_nan():
    saliency = _blob(30, 20)[None]
    empty = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    assert math.isnan(pointing_game(saliency, empty).item())
    assert math.isnan(mass_inside(saliency, empty).item())
    assert math.isnan(nss(saliency, empty.float()).item())
    assert math.isnan(gaze_auc(saliency, empty.float()).item())


def test_truth_of_another_size_is_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"spatial size .*\(1, 1, 64, 64\).*\(1, 1, 32, 128\)"):
        mass_inside(_blob(30, 20)[None], torch.ones(1, 1, 32, 128))


def test_a_finding_record_without_geometry_names_the_field():
    with pytest.raises(CXRDataError, match="findings.*expected a finding record with name, x, y, rx, ry"):
        FindingMasks()([{"name": "Lung Lesion", "x": 10.0}], (32, 32), path="study.dcm")


# --- scores against gaze ------------------------------------------------------------------------------------

def test_saliency_equal_to_gaze_scores_high_and_inverted_scores_low():
    gaze = torch.stack([_blob(30, 20) + 0.6 * _blob(12, 44, 6.0), _blob(40, 40, 8.0)])
    assert (nss(gaze, gaze) > 1.0).all()
    assert gaze_auc(gaze, gaze).tolist() == pytest.approx([1.0, 1.0])
    assert ncc(gaze, gaze).tolist() == pytest.approx([1.0, 1.0])
    inverted = -gaze
    assert (nss(inverted, gaze) < -1.0).all()
    assert (gaze_auc(inverted, gaze) < 0.01).all()
    # a map peaked in the corner farthest from where the reader looked is worse than chance
    elsewhere = torch.stack([_blob(63, 63, 8.0), _blob(0, 0, 8.0)])
    assert (gaze_auc(elsewhere, gaze) < 0.5).all() and (nss(elsewhere, gaze) < 0).all()


def test_gaze_positive_pixels_are_the_most_looked_at_fifth():
    gaze = torch.linspace(0, 1, 100).reshape(1, 1, 10, 10)
    positive = gaze_positive(gaze, top_fraction=0.2)
    assert positive.sum().item() == 20 and positive[0, -20:].all()
    sparse = torch.zeros(1, 1, 10, 10)
    sparse[0, 0, 0, :5] = 1.0  # only 5 % of the image was looked at: those pixels, not 20 % ties at zero
    assert gaze_positive(sparse).sum().item() == 5


# --- ellipse rasteriser -------------------------------------------------------------------------------------

@pytest.mark.parametrize("angle", [0.0, 0.7, math.pi / 2])
def test_ellipse_mask_has_the_area_of_pi_a_b(angle):
    mask = ellipse_mask(100.0, 80.0, 40.0, 15.0, (200, 220), angle)
    assert mask.sum() == pytest.approx(math.pi * 40 * 15, rel=0.03)


def test_ellipse_mask_is_centred_and_rotated_clockwise_on_screen():
    wide = ellipse_mask(50.0, 40.0, 30.0, 8.0, (100, 100))
    rows, cols = np.nonzero(wide)
    assert (cols.mean(), rows.mean()) == pytest.approx((50.0, 40.0), abs=0.1)
    assert np.ptp(cols) > 3 * np.ptp(rows)  # rx runs along x = columns
    tall = ellipse_mask(50.0, 40.0, 30.0, 8.0, (100, 100), angle=math.pi / 2)
    rows, cols = np.nonzero(tall)
    assert np.ptp(rows) > 3 * np.ptp(cols)
    diagonal = ellipse_mask(50.0, 50.0, 30.0, 8.0, (100, 100), angle=math.pi / 4)
    rows, cols = np.nonzero(diagonal)
    assert np.corrcoef(cols, rows)[0, 1] > 0.8  # the long axis runs down-right: clockwise on screen (y down)
    assert ellipse_mask(-50.0, -50.0, 10.0, 10.0, (100, 100)).sum() == 0


# --- the Ignite metric --------------------------------------------------------------------------------------

def _batch(seed: int, n: int = 3):
    generator = torch.Generator().manual_seed(seed)
    saliency = torch.rand(n, 1, SIZE, SIZE, generator=generator) + torch.stack(
        [_blob(*(torch.rand(2, generator=generator) * SIZE).tolist()) for _ in range(n)])
    masks = torch.stack([_ellipse(*(torch.rand(2, generator=generator) * 40 + 12).tolist(), 10, 7)
                         for _ in range(n)])
    gaze = torch.stack([_blob(*(torch.rand(2, generator=generator) * SIZE).tolist(), 6.0) for _ in range(n)])
    return saliency, masks, gaze


def test_metric_over_two_updates_equals_one_update_on_the_concatenation():
    (s1, m1, g1), (s2, m2, g2) = _batch(0), _batch(1)
    split, joined = GazeAttention(), GazeAttention()
    split.update((s1, m1, g1))
    split.update((s2, m2, g2))
    joined.update((torch.cat([s1, s2]), torch.cat([m1, m2]), torch.cat([g1, g2])))
    a, b = split.compute(), joined.compute()
    assert a.keys() == b.keys() >= {"pointing_game", "mass_inside", "nss", "auc", "n_findings", "n_gaze"}
    for key in a:
        assert a[key] == pytest.approx(b[key])
    assert a["n_findings"] == a["n_gaze"] == 6


def test_metric_skips_samples_without_truth():
    saliency, masks, gaze = _batch(2)
    masks[1] = False  # no finding region for sample 1
    gaze[2] = 0.0  # no gaze for sample 2
    metric = GazeAttention()
    metric.update((saliency, masks, gaze))
    metric.update((saliency[:1], None, None))  # neither truth: nothing counted
    result = metric.compute()
    assert result["n_findings"] == 2 and result["n_gaze"] == 2
    keep = [0, 2]
    assert result["pointing_game"] == pytest.approx(pointing_game(saliency[keep], masks[keep]).mean().item())
    assert result["nss"] == pytest.approx(nss(saliency[:2], gaze[:2]).mean().item())


def test_metric_reports_a_dict_to_an_ignite_engine():
    batches = [_batch(3), _batch(4)]
    engine = Engine(lambda _engine, batch: batch)
    GazeAttention().attach(engine, "gaze_attention")
    state = engine.run(batches)
    assert state.metrics["gaze_attention"]["n_findings"] == 6
    assert 0 <= state.metrics["gaze_attention"]["auc"] <= 1


# --- saliency -----------------------------------------------------------------------------------------------

class RegionReader(nn.Module):
    """A toy image tower whose similarity to the prompt (1, 0) depends only on rows 40-55, columns 8-23."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        level = image[:, 0, 40:56, 8:24].mean(dim=(1, 2))
        return F.normalize(torch.stack([level, torch.ones_like(level)], dim=-1), dim=-1)


def test_occlusion_saliency_of_a_toy_model_lies_on_the_region_it_reads():
    torch.manual_seed(0)
    image = torch.randn(1, 1, SIZE, SIZE)
    image[:, :, 40:56, 8:24] += 3.0
    region = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    region[..., 40:56, 8:24] = True
    saliency = similarity_saliency(RegionReader(), image, torch.tensor([1.0, 0.0]))
    assert saliency.shape == (1, 1, SIZE, SIZE)
    assert pointing_game(saliency, region).item() == 1.0
    assert mass_inside(saliency, region).item() > 0.5  # the region is 6 % of the image
    reach = F.max_pool2d(region.float(), 33, stride=1, padding=16).bool()  # windows touching the region
    assert saliency[~reach].abs().max().item() < 1e-6


def test_saliency_of_a_tiny_network_has_the_image_shape_and_leaves_no_hooks(tiny_network):
    image = torch.randn(2, 1, SIZE, SIZE)
    text = F.normalize(torch.randn(3, 256), dim=-1)
    occlusion = similarity_saliency(tiny_network, image, text, mask_size=16, overlap=0.0)
    assert occlusion.shape == (2, 3, SIZE, SIZE) and occlusion.isfinite().all() and occlusion.abs().sum() > 0
    assert similarity_saliency(tiny_network, image[:1], text[0]).shape == (1, 1, SIZE, SIZE)
    gradcam = similarity_saliency(tiny_network, image, text, method="gradcam")
    assert gradcam.shape == (2, 3, SIZE, SIZE) and gradcam.isfinite().all() and (gradcam >= 0).all()
    assert not any(m._forward_hooks or m._backward_hooks for m in tiny_network.modules())
    assert tiny_network.training is False
    with pytest.raises(ValueError, match="method"):
        similarity_saliency(tiny_network, image, text, method="lime")


# --- the phantom world --------------------------------------------------------------------------------------

def _truth(world) -> dict[str, dict]:
    return {r["dicom_id"]: r for r in map(json.loads, (world / TRUTH_FILE).read_text().splitlines())}


def test_datalist_selects_frontals_of_the_asked_splits_with_gaze_or_findings(world):
    truth = _truth(world)
    frontal_train = {d for d, r in truth.items() if r["split"] == "train" and r["view"] in ("PA", "AP")}
    with_findings = {d for d in frontal_train if truth[d]["findings"]}
    with_gaze = {d for d in frontal_train if truth[d].get("gaze")}
    assert with_findings and with_gaze and with_findings & with_gaze  # the world exercises every case
    items = gaze_attention_datalist(world, splits=("train",))
    assert {i["dicom_id"] for i in items} == with_findings | with_gaze
    assert {i["dicom_id"] for i in items if "fixations" in i} == with_gaze
    for item in items:
        assert item["findings"] == truth[item["dicom_id"]]["findings"]
    both = gaze_attention_datalist(world, splits=("train",), require="both")
    assert {i["dicom_id"] for i in both} == with_findings & with_gaze
    assert all(i["split"] == "test" for i in gaze_attention_datalist(world, splits=("test",)))


def test_finding_masks_follow_the_image_through_resize_and_centre_crop(world):
    items = gaze_attention_datalist(world, splits=("train",), require="both")
    item = max(items, key=lambda i: len(i["findings"]))
    ours, reference = gaze_attention_transforms(SIZE)(item), eval_transforms(SIZE, with_heatmap=True)(item)
    assert torch.equal(ours["image"], reference["image"]) and torch.equal(ours["heatmap"], reference["heatmap"])
    rows, cols = _truth(world)[item["dicom_id"]]["rows"], _truth(world)[item["dicom_id"]]["cols"]
    scale = SIZE / min(rows, cols)
    resized = (max(SIZE, round(rows * scale)), max(SIZE, round(cols * scale)))
    top, left = (resized[0] - SIZE) // 2, (resized[1] - SIZE) // 2
    assert ours[NAMES_KEY] == list(dict.fromkeys(f["name"] for f in item["findings"]))
    for name, channel in zip(ours[NAMES_KEY], ours[MASK_KEY]):
        expected = np.zeros((SIZE, SIZE), bool)
        for f in (f for f in item["findings"] if f["name"] == name):
            expected |= ellipse_mask((f["x"] + 0.5) * resized[1] / cols - 0.5 - left,
                                     (f["y"] + 0.5) * resized[0] / rows - 0.5 - top,
                                     f["rx"] * resized[1] / cols, f["ry"] * resized[0] / rows, (SIZE, SIZE))
        if expected.sum() >= 20:  # tiny regions are all edge at this size
            got = channel.numpy() >= 0.5
            assert (got & expected).sum() / (got | expected).sum() > 0.7, name


def test_evaluation_over_the_phantom_counts_every_case_and_draws_a_figure(world, tiny_network, tmp_path):
    items = gaze_attention_datalist(world, splits=("train",))
    tokenizer = build_tokenizer("eclip-tiny-cnn")
    result = evaluate_gaze_attention(tiny_network, tokenizer, items, image_size=SIZE, examples=2, progress=False)
    scores = result.scores
    has_findings = [i for i in items if i["findings"]]
    assert scores["n_studies"] == len(has_findings)
    assert scores["n_findings"] == sum(len({f["name"] for f in i["findings"]}) for i in has_findings)
    assert scores["n_gaze"] == sum("fixations" in i for i in has_findings)
    assert scores["n_gaze_without_findings"] == sum("fixations" in i and not i["findings"] for i in items)
    assert scores["n_skipped"] == 0
    assert sum(v for k, v in scores.items() if k.startswith("n_findings/")) == scores["n_findings"]
    for key in ("pointing_game", "mass_inside", "mask_area", "auc"):
        assert 0 <= scores[key] <= 1, key
    assert math.isfinite(scores["nss"]) and -1 <= scores["ncc"] <= 1
    assert len(result.examples) == 2 and result.examples[0].heatmap is not None
    assert result.examples[0].saliency.shape == (SIZE, SIZE)
    path = plot_gaze_attention(result.examples, tmp_path / "figures" / "gaze_attention.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
