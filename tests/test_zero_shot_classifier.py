"""The zero-shot finding classifier: per-finding probabilities, eCLIP checkpoints load strictly and refresh
the prompt embeddings, and the network scripts with only its image tower and prompt embeddings inside."""

import io

import pytest
import torch

from eclip_monai.networks import build_eclip
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from eclip_monai.prompts import finding_prompts
from eclip_monai.networks import build_tokenizer

FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]


def _eclip(seed: int, experts: bool = True, model_name: str = "eclip-tiny-cnn"):
    torch.manual_seed(seed)
    return build_eclip(model_name, image_size=64, experts=experts)


def _classifier(seed: int, experts: bool = True, model_name: str = "eclip-tiny-cnn") -> ZeroShotClassifier:
    network = _eclip(seed, experts, model_name)
    return ZeroShotClassifier(network, build_tokenizer(model_name), FINDINGS).eval()


def test_prompts_pair_each_term_with_its_negation():
    prompts = finding_prompts(["Pleural Effusion", "Hernia"], terms={"Hernia": ["hiatal hernia"]})
    assert prompts["Pleural Effusion"] == (["pleural effusion", "effusion"], ["no pleural effusion", "no effusion"])
    assert prompts["Hernia"] == (["hiatal hernia"], ["no hiatal hernia"])
    with pytest.raises(ValueError, match="Hernia"):
        finding_prompts(["Hernia"], terms={"Hernia": []})


def test_probabilities_per_finding_match_the_pairwise_softmax():
    model = _classifier(0)
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        probs = model(image)
        features = model.embed(image)
    assert probs.shape == (2, len(FINDINGS)) and ((probs > 0) & (probs < 1)).all()
    assert torch.allclose(features.norm(dim=-1), torch.ones(2), atol=1e-5)
    scale = model.logit_scale()
    expected = torch.sigmoid(scale * (features @ model.positive.T - features @ model.negative.T))
    assert torch.allclose(probs, expected, atol=1e-5)


def test_outputs_are_the_eclip_towers_own():
    network = _eclip(0).eval()
    model = ZeroShotClassifier(network, build_tokenizer("eclip-tiny-cnn"), FINDINGS).eval()
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(image), network.encode_image(image), rtol=0, atol=0)
        positive = network.encode_text(build_tokenizer("eclip-tiny-cnn")(["pleural effusion", "effusion"]))
    expected = torch.nn.functional.normalize(positive.mean(0), dim=-1)
    torch.testing.assert_close(model.positive[1], expected, atol=1e-6, rtol=0)
    assert model.logit_scale() == network.logit_scale()


def test_an_eclip_checkpoint_loads_strictly_and_refreshes_the_prompts():
    source, target = _classifier(1), _classifier(2)
    assert not torch.allclose(source.positive, target.positive)
    trained = _eclip(1)  # the weights of ``source``, heatmap processor included
    assert target.load_state_dict(trained.state_dict()) is not None  # strict: the processor is dropped
    torch.testing.assert_close(target.positive, source.positive)
    torch.testing.assert_close(target.negative, source.negative)
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(image), source(image), atol=1e-6, rtol=0)
    _classifier(3, experts=False).load_state_dict(trained.state_dict())  # the processor plays no part
    baseline = _eclip(4, experts=False)  # a CLIP baseline checkpoint loads as well
    target.load_state_dict(baseline.state_dict())
    torch.testing.assert_close(target.positive, _classifier(4, experts=False).positive)


def test_the_state_dict_is_the_clip_part_of_the_eclip_one():
    model = _classifier(5)
    trained = _eclip(5)
    expected = {k for k in trained.state_dict() if not k.startswith("heatmap_processor.")}
    assert set(model.state_dict()) == expected
    clip_only = _eclip(6, experts=False)
    clip_only.load_state_dict(model.state_dict())  # and loads back into an eCLIP
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in clip_only.state_dict().items())
    text = next(k for k in expected if not k.startswith(("clip.visual.", "clip.logit_scale")))
    partial = {k: v for k, v in trained.state_dict().items() if k != text}
    with pytest.raises(RuntimeError, match=f'Missing key.*"{text}"'):
        _classifier(7).load_state_dict(partial)


def test_the_module_holds_only_the_image_tower_and_prompt_embeddings():
    model = _classifier(8)
    assert {name for name, _ in model.named_children()} == {"clip"}
    assert {name for name, _ in model.clip.named_children()} == {"visual"}
    assert not any(name.startswith("heatmap_processor") for name, _ in model.named_parameters())
    assert sorted(name for name, _ in model.named_buffers() if "." not in name) == ["negative", "positive"]


@pytest.mark.parametrize("model_name", ["eclip-tiny-cnn", "eclip-tiny"])  # timm ResNet, open_clip ViT
def test_torchscript_scripting_keeps_the_outputs_and_drops_the_text_tower(model_name):
    model = _classifier(9, model_name=model_name)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    image = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), model(image), atol=1e-5, rtol=0)
        torch.testing.assert_close(scripted.embed(image), model.embed(image), atol=1e-5, rtol=0)
    names = set(scripted.state_dict())
    assert names == {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers()}
    assert {"positive", "negative", "clip.logit_scale"} <= names
    assert not [k for k in names if not k.startswith("clip.visual.") and k not in ("positive", "negative",
                                                                                     "clip.logit_scale")]


def test_device_moves_leave_the_text_tower_in_place():
    model = _classifier(10)
    text = next(t for k, t in model.prompt_encoder.state_dict(keep_vars=True).items())
    model.to(torch.float64)
    assert text.dtype == torch.float32 and model.positive.dtype == torch.float64
    model.load_state_dict(_eclip(11).state_dict())  # re-embeds with the float32 text tower
    assert model.positive.dtype == torch.float64
