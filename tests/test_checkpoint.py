"""Reading network weights: every layout training and packaging write, DDP names, and clear refusals."""

from __future__ import annotations

import pytest
import torch

from eclip_monai.errors import CXRDataError
from eclip_monai.networks import build_eclip
from eclip_monai.networks.checkpoint import has_processor, load_weights, read_state_dict


def tiny(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_eclip(model_name="eclip-tiny", image_size=64, **kwargs)


def same(a: torch.nn.Module, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("layout", ["model", "network", "bare", "ddp"])
def test_every_written_layout_loads_strictly(layout, tmp_path):
    state = tiny(0).state_dict()
    saved = {"model": {"model": state}, "network": {"network": state, "optimizer": {}}, "bare": state,
             "ddp": {f"module.{k}": v for k, v in state.items()}}[layout]
    torch.save(saved, tmp_path / "model.pt")
    assert not same(tiny(1), state)
    assert same(load_weights(tiny(1), tmp_path / "model.pt"), state)
    assert read_state_dict(tmp_path / "model.pt").keys() == state.keys()


def test_excluded_modules_keep_their_own_weights_and_need_not_be_stored(tmp_path):
    eclip = tiny(0).state_dict()
    torch.save({"model": eclip}, tmp_path / "eclip.pt")
    fresh = tiny(1)
    processor = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("heatmap_processor.")}
    loaded = load_weights(fresh, tmp_path / "eclip.pt", exclude=["heatmap_processor"]).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in processor.items())
    assert all(torch.equal(loaded[k], v) for k, v in eclip.items() if k.startswith("clip."))
    clip = tiny(2, experts=False).state_dict()  # a CLIP baseline: no processor stored
    torch.save(clip, tmp_path / "clip.pt")
    assert has_processor(eclip) and not has_processor(clip)
    load_weights(tiny(3), tmp_path / "clip.pt", exclude=["heatmap_processor"])
    load_weights(tiny(3, experts=False), tmp_path / "eclip.pt", exclude=["heatmap_processor"])
    with pytest.raises(CXRDataError, match=r"clip\.pt: model: the checkpoint has no heatmap_processor"):
        load_weights(tiny(3), tmp_path / "clip.pt")


def test_files_that_are_not_fitting_weights_are_refused_naming_them(tmp_path):
    network = tiny(0, experts=False)
    with pytest.raises(CXRDataError, match=r"missing\.pt: file not found"):
        load_weights(network, tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CXRDataError, match=r"garbage\.pt: expected a readable PyTorch checkpoint"):
        load_weights(network, tmp_path / "garbage.pt")
    torch.save({"model": {"step": 3}}, tmp_path / "odd.pt")
    with pytest.raises(CXRDataError, match=r"odd\.pt: model: expected a state dict of tensors"):
        load_weights(network, tmp_path / "odd.pt")
    torch.save({"network": {"encoder.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CXRDataError, match=r"other\.pt: model: the weights do not fit the network.*unexpected"):
        load_weights(network, tmp_path / "other.pt")
    torch.save(build_eclip(model_name="eclip-tiny", image_size=96, experts=False).state_dict(), tmp_path / "big.pt")
    with pytest.raises(CXRDataError, match=r"big\.pt: model: the weights do not fit the network"):
        load_weights(network, tmp_path / "big.pt")
