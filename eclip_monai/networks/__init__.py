"""The eCLIP network as MONAI-friendly components: open_clip towers, the heatmap processor, eCLIP."""

from eclip_monai.networks.checkpoint import load_weights, read_state_dict
from eclip_monai.networks.eclip import ECLIP, build_eclip, random_blob_heatmaps
from eclip_monai.networks.heatmap_processor import HeatmapProcessor
from eclip_monai.networks.towers import (
    DEFAULT_MODEL,
    ECLIP_MODELS,
    adapt_input_channels,
    build_tokenizer,
    create_clip_model,
    packaged_text_model_dir,
)

__all__ = [
    "DEFAULT_MODEL",
    "ECLIP",
    "ECLIP_MODELS",
    "HeatmapProcessor",
    "adapt_input_channels",
    "build_eclip",
    "build_tokenizer",
    "create_clip_model",
    "load_weights",
    "packaged_text_model_dir",
    "random_blob_heatmaps",
    "read_state_dict",
]
