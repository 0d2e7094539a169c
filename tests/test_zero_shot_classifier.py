"""The zero-shot finding classifier: per-finding probabilities, eCLIP checkpoints load strictly, and the prompt
embeddings follow the loaded text tower."""

import pytest
import torch

from eclip_monai.networks import build_eclip
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from eclip_monai.prompts import finding_prompts
from eclip_monai.networks import build_tokenizer

FINDINGS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]


def _classifier(seed: int, experts: bool = True) -> ZeroShotClassifier:
    torch.manual_seed(seed)
    network = build_eclip("eclip-tiny-cnn", image_size=64, experts=experts)
    return ZeroShotClassifier(network, build_tokenizer("eclip-tiny-cnn"), FINDINGS).eval()


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


def test_loading_an_eclip_checkpoint_is_strict_and_refreshes_the_prompts():
    source, target = _classifier(1), _classifier(2)
    assert not torch.allclose(source.positive, target.positive)
    trained = build_eclip("eclip-tiny-cnn", image_size=64, experts=True)
    trained.load_state_dict(source.state_dict())  # the classifier's state dict *is* the eCLIP one
    target.load_state_dict(trained.state_dict())
    assert torch.allclose(source.positive, target.positive) and torch.allclose(source.negative, target.negative)
    image = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(source(image), target(image), atol=1e-6)
    with pytest.raises(RuntimeError, match="heatmap_processor"):
        _classifier(3, experts=False).load_state_dict(trained.state_dict())
