"""Zero-shot finding classifier: a trained eCLIP reduced to what inference runs, its image tower and the
prompt embeddings of its text tower.

Each finding is judged on its own against its negation ("pleural effusion" vs "no pleural effusion"): the
probability is the softmax over that pair of ``logit_scale × cosine``, so findings do not compete with each
other and a study can have several.

The classifier's modules are the image tower and the temperature, its buffers the (F, D) prompt embeddings:
that is all TorchScript (scripted, MONAI's default export, or traced) and ONNX see, so an exported classifier
has neither a text tower nor a heatmap processor. The text tower stays beside it, outside the module tree
(``PromptEncoder``), because a training checkpoint holds text weights, not prompt embeddings: the classifier's
state dict is the CLIP part of an eCLIP checkpoint, and loading one recomputes the prompt embeddings. Every
loader of MONAI and MONAI Label (``CheckpointLoader``, ``ckpt_export``/``onnx_export``, ``monai.bundle.load``,
``BasicInferTask``) therefore turns a training checkpoint into a consistent classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.networks.checkpoint import PROCESSOR
from eclip_monai.networks.eclip import ECLIP
from eclip_monai.prompts import finding_prompts


def class_embeddings(prompt_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """(C, D) class embeddings from one (P_c, D) tensor of prompt embeddings per class: the mean of the
    L2-normalised prompt embeddings, renormalised (an ensemble, so no single phrasing dominates)."""
    return F.normalize(torch.stack([F.normalize(p.float(), dim=-1).mean(0) for p in prompt_features]), dim=-1)


def _is_image_weight(name: str) -> bool:
    """Whether a CLIP model's weight belongs to what the classifier keeps: the image tower and temperature."""
    return name.startswith("visual.") or name == "logit_scale"


class ImageTower(nn.Module):
    """A CLIP model's image side under the CLIP model's own names (``visual``, ``logit_scale``), so the
    classifier's ``clip.*`` weights are named as in an eCLIP checkpoint; ``encode_image`` as on CLIP."""

    def __init__(self, visual: nn.Module, logit_scale: nn.Parameter):
        super().__init__()
        self.visual = visual
        self.logit_scale = logit_scale

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode_image(image)


class PromptEncoder:
    """A CLIP model's text side and the finding prompts it embeds, deliberately not an ``nn.Module``.

    Held by a ``ZeroShotClassifier`` outside its module tree, so export, ``.to(device)`` and ``parameters()``
    never see it; its weights stay where they were built (the CPU in the bundle), which is where the prompts
    are re-embedded when weights are loaded.

    Args:
        clip_model: an open_clip ``CLIP``/``CustomTextCLIP``; only its text weights are read or written here.
        tokenizer: its tokenizer.
        prompts: ``finding -> (positive prompts, negative prompts)`` (``prompts.finding_prompts``).
    """

    def __init__(self, clip_model: nn.Module, tokenizer: Callable,
                 prompts: Mapping[str, tuple[Sequence[str], Sequence[str]]]):
        self.model, self.tokenizer, self.prompts = clip_model, tokenizer, dict(prompts)
        self.names = [name for name in clip_model.state_dict() if not _is_image_weight(name)]

    def state_dict(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        state = self.model.state_dict(keep_vars=keep_vars)
        return {name: state[name] for name in self.names}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy text weights (named as in ``names``) into the text tower; a shape that differs raises."""
        self.model.load_state_dict(dict(state), strict=False)

    @torch.no_grad()
    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, D) positive and negative class embeddings in one encoder pass, text modules in eval mode."""
        text = [module for name, module in self.model.named_children() if name != "visual"]
        modes = [module.training for module in text]
        groups = [group for pair in self.prompts.values() for group in pair]  # pos, neg, pos, neg, ...
        device = next(p.device for n, p in self.model.named_parameters() if not _is_image_weight(n))
        try:
            for module in text:
                module.eval()
            tokens = self.tokenizer([prompt for group in groups for prompt in group]).to(device)
            features = self.model.encode_text(tokens).split([len(group) for group in groups])
            features = class_embeddings(features)
        finally:
            for module, mode in zip(text, modes):
                module.train(mode)
        return features[0::2].contiguous(), features[1::2].contiguous()


class ZeroShotClassifier(nn.Module):
    """Chest X-ray (N, C, H, W) → (N, F) finding probabilities; ``embed`` gives the retrieval embedding.

    Built from an eCLIP (trained, or to be loaded), it keeps the image tower as ``clip`` (``clip.visual``,
    ``clip.logit_scale``; ``clip.encode_image`` as on the CLIP model) and the prompt embeddings as buffers
    ``positive``/``negative``, and leaves the heatmap processor behind. Its state dict adds the text weights,
    so it is the CLIP part of the eCLIP one: a training or bundle checkpoint, eCLIP or CLIP baseline, loads
    into it strictly (the heatmap processor's weights, if any, are dropped), and every load of text weights
    recomputes the prompt embeddings. ``torch.jit.script`` compiles it (MONAI's default ``ckpt_export``)
    wherever the image tower scripts: open_clip's ViT and timm's ResNet, MobileNetV3 and Swin-T do.

    Args:
        network: a (trained or to-be-loaded) ``ECLIP``; its towers are shared, not copied.
        tokenizer: the text tower's tokenizer (``networks.build_tokenizer``).
        findings: names of the findings to score, in output order.
        terms: optional ``finding -> prompt terms`` overriding ``prompts.FINDING_TERMS``.
    """

    __jit_ignored_attributes__ = ["prompt_encoder"]

    def __init__(self, network: ECLIP, tokenizer: Callable, findings: Sequence[str] = DEFAULT_FINDINGS,
                 terms: Mapping[str, Sequence[str]] | None = None):
        super().__init__()
        if not findings:
            raise ValueError("findings is empty; expected at least one finding name to score")
        self.clip = ImageTower(network.clip.visual, network.clip.logit_scale)
        self.max_log_scale = float(network.max_log_scale)
        self.findings = list(findings)
        self.prompt_encoder = PromptEncoder(network.clip, tokenizer, finding_prompts(self.findings, terms))
        positive, negative = self.prompt_encoder.encode()
        self.register_buffer("positive", positive, persistent=False)
        self.register_buffer("negative", negative, persistent=False)

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

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """The text weights join the state dict under their eCLIP names (``clip.<name>``); the prompt
        embeddings are derived from them, so they are not saved."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, value in self.prompt_encoder.state_dict(keep_vars).items():
            destination[f"{prefix}clip.{name}"] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Drop heatmap-processor weights, route text weights to the prompt encoder and re-embed the prompts;
        the image tower and temperature load as usual. A missing text weight is a missing key."""
        for key in [k for k in state_dict if k.startswith(f"{prefix}{PROCESSOR}.")]:
            del state_dict[key]
        keys = {name: f"{prefix}clip.{name}" for name in self.prompt_encoder.names}
        text = {name: state_dict.pop(key) for name, key in keys.items() if key in state_dict}
        if strict:
            missing_keys.extend(key for name, key in keys.items() if name not in text)
        if text:
            try:
                self.prompt_encoder.load(text)
            except RuntimeError as e:  # shapes that differ
                error_msgs.append(str(e).strip())
            else:
                positive, negative = self.prompt_encoder.encode()
                self.positive, self.negative = positive.to(self.positive), negative.to(self.negative)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
