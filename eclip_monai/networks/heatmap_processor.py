"""The heatmap processor HP(I, H): turns an image and a radiologist's gaze heatmap into an "expert image"."""

from __future__ import annotations

import torch
from torch import nn



class HeatmapProcessor(nn.Module):
    """Cross-attention from gaze-weighted patches to image patches, decoded back to an image.

    The image I and the gaze-weighted image H ⊙ I are patchified by one shared convolution; the H ⊙ I tokens
    query the I tokens (so each patch gathers context where the radiologist looked), and a linear layer plus a
    transposed convolution paint the result back at the input's size. Its output goes through the unchanged
    image tower, which is why eCLIP works with any CLIP variant. A heatmap of all ones means "no heatmap":
    the priming loss trains HP(I, 1) ≈ I.

    Each heatmap is scaled to max 1 *per image* and kept float, so one sample's gaze intensity never changes
    another's result and low-valued maps are not truncated to zero.

    Args:
        in_channels: image channels (1 for grayscale X-rays).
        embed_dim: token width.
        patch_size: patch side; image height and width must be multiples of it.
        num_heads: attention heads.
    """

    def __init__(self, in_channels: int = 1, embed_dim: int = 256, patch_size: int = 16, num_heads: int = 8):
        super().__init__()
        self.patch_size = patch_size
        self.patchify = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.unpatchify = nn.ConvTranspose2d(embed_dim, in_channels, patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
        """Map image (B, C, H, W) and heatmap (B, 1 or C, H, W) to an expert image (B, C, H, W)."""
        self._check_shapes(image, heatmap)
        heatmap = heatmap.to(image.dtype)
        peak = heatmap.amax(dim=(1, 2, 3), keepdim=True)
        heatmap = heatmap / peak.clamp_min(torch.finfo(heatmap.dtype).tiny)
        image_tokens = self._tokens(image)
        gaze_tokens = self._tokens(heatmap * image)
        attended, _ = self.attention(gaze_tokens, image_tokens, image_tokens, need_weights=False)
        grid = self.proj(attended).transpose(1, 2)
        rows, cols = image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size
        return self.unpatchify(grid.reshape(grid.shape[0], grid.shape[1], rows, cols))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.patchify(x).flatten(2).transpose(1, 2)  # (B, N, D)

    def _check_shapes(self, image: torch.Tensor, heatmap: torch.Tensor) -> None:
        channels = self.patchify.in_channels
        if image.ndim != 4 or image.shape[1] != channels:
            raise ValueError(f"image: expected an image batch (B, {channels}, H, W), found {tuple(image.shape)}")
        if image.shape[-2] % self.patch_size or image.shape[-1] % self.patch_size:
            raise ValueError(f"image: expected height and width divisible by the patch size {self.patch_size}, "
                             f"found {tuple(image.shape[-2:])}")
        matches = heatmap.ndim == 4 and heatmap.shape[0] == image.shape[0] and heatmap.shape[1] in (1, channels)
        if not matches or heatmap.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"heatmap: expected a heatmap batch (B, 1 or {channels}, H, W) matching the image "
                             f"{tuple(image.shape)}, found {tuple(heatmap.shape)}")
