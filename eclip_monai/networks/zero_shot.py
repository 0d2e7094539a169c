"""Zero-shot finding classifier: a trained eCLIP as an image-only network with its text side precomputed.

Each finding is judged on its own against its negation ("pleural effusion" vs "no pleural effusion"): the
probability is the softmax over that pair of ``logit_scale × cosine``, so findings do not compete with each
other and a study can have several. The prompt embeddings are computed once from the text tower and
recomputed whenever weights are loaded, so the network is a plain image → tensor module for inference,
TorchScript and ONNX export.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.networks.eclip import ECLIP
from eclip_monai.prompts import finding_prompts


def class_embeddings(prompt_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """(C, D) class embeddings from one (P_c, D) tensor of prompt embeddings per class: the mean of the
    L2-normalised prompt embeddings, renormalised (an ensemble, so no single phrasing dominates)."""
    return F.normalize(torch.stack([F.normalize(p.float(), dim=-1).mean(0) for p in prompt_features]), dim=-1)


class ZeroShotClassifier(nn.Module):
    """Chest X-ray (N, C, H, W) → (N, F) finding probabilities; ``embed`` gives the retrieval embedding.

    Holds the eCLIP model under the same attribute names (``clip``, ``heatmap_processor``), so a training or
    bundle checkpoint of the eCLIP network loads into it strictly; the processor is unused here.

    Args:
        network: a (trained or to-be-loaded) ``ECLIP``.
        tokenizer: the text tower's tokenizer (``networks.build_tokenizer``).
        findings: names of the findings to score, in output order.
        terms: optional ``finding -> prompt terms`` overriding ``prompts.FINDING_TERMS``.
    """

    def __init__(self, network: ECLIP, tokenizer: Callable, findings: Sequence[str] = DEFAULT_FINDINGS,
                 terms: Mapping[str, Sequence[str]] | None = None):
        super().__init__()
        if not findings:
            raise ValueError("findings is empty; expected at least one finding name to score")
        self.clip = network.clip
        self.heatmap_processor = network.heatmap_processor
        self.max_log_scale = network.max_log_scale
        self.findings = list(findings)
        self.tokenizer = tokenizer
        self.prompts = finding_prompts(self.findings, terms)
        positive, negative = self._prompt_features()
        self.register_buffer("positive", positive, persistent=False)
        self.register_buffer("negative", negative, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_text_features())

    @torch.no_grad()
    def _prompt_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, D) positive and negative class embeddings from the current text tower, one encoder pass."""
        was_training = self.training
        self.eval()
        groups = [group for pair in self.prompts.values() for group in pair]  # pos, neg, pos, neg, ...
        tokens = self.tokenizer([prompt for group in groups for prompt in group])
        tokens = tokens.to(self.clip.logit_scale.device)
        features = class_embeddings(self.clip.encode_text(tokens).split([len(group) for group in groups]))
        self.train(was_training)
        return features[0::2].contiguous(), features[1::2].contiguous()

    def refresh_text_features(self) -> None:
        """Recompute the prompt-ensemble embeddings from the current text tower (after weights change)."""
        self.positive, self.negative = self._prompt_features()

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.clamp(max=self.max_log_scale).exp()

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings, comparable with report embeddings for retrieval."""
        return F.normalize(self.clip.encode_image(image), dim=-1)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) P(finding present) from normalised image features."""
        features = features.to(self.positive.dtype)
        pair = torch.stack([features @ self.positive.T, features @ self.negative.T], dim=-1)
        return (self.logit_scale() * pair).softmax(-1)[..., 0]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.embed(image))
