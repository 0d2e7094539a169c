"""Embed an evaluation set with a trained network: images (and reports) → L2-normalised CPU features."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose
from monai.utils import convert_to_tensor
from torch import nn
from tqdm import tqdm

from eclip_monai.data.robust import SKIPPED_KEY, SkipBadSamples, collate_skip_bad
from eclip_monai.errors import CXRDataError
from eclip_monai.networks.zero_shot import class_embeddings
from eclip_monai.transforms.io import LoadCXRImaged
from eclip_monai.transforms.pipelines import eval_transforms


@dataclass
class Embeddings:
    """Features of the samples that loaded, in datalist order; ``skipped`` counts those that did not."""

    image: torch.Tensor
    text: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    reports: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: int = 0


def eval_image_transforms(image_size: int = 224, tokenizer=None, **kwargs) -> Compose:
    """``transforms.eval_transforms`` reading with ``LoadCXRImaged``, so PNG/JPG sets
    (CheXpert, OpenI) get exactly the same resizing, cropping and normalisation as DICOM ones."""
    return eval_transforms(image_size, tokenizer=tokenizer, loader=LoadCXRImaged, **kwargs)


@torch.no_grad()
def embed_dataset(
    network: nn.Module,
    datalist: Sequence[dict],
    transform: Compose,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    desc: str = "embedding",
    progress: bool = True,
) -> Embeddings:
    """Run ``network.encode_image`` (and ``encode_text`` when the transform yields ``"text"``) over the
    datalist in order; samples failing with ``CXRDataError`` are skipped and counted, as in training."""
    network.eval()
    dataset = SkipBadSamples(Dataset(list(datalist), transform))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_bad)
    images, texts, labels, out = [], [], [], Embeddings(torch.empty(0))
    for batch in tqdm(loader, desc=desc, disable=not progress):
        out.skipped += batch.pop(SKIPPED_KEY)
        if "image" not in batch:
            continue
        image = convert_to_tensor(batch["image"], track_meta=False)  # features need no image metadata
        images.append(network.encode_image(image.to(device)).float().cpu())
        if "text" in batch:
            texts.append(network.encode_text(batch["text"].to(device)).float().cpu())
        if "label" in batch:
            labels.append(torch.as_tensor(batch["label"]))
        out.reports.extend(batch.get("report", []))
        out.paths.extend(batch["image"].meta["filename_or_obj"])
    if not images:
        raise CXRDataError(f"no sample of the {len(datalist)} in the datalist could be loaded", field="image")
    out.image = torch.cat(images)
    out.text = torch.cat(texts) if texts else None
    out.labels = torch.cat(labels) if labels else None
    return out


@torch.no_grad()
def embed_texts(network: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, D) text features of ``texts`` (prompts, reports), batched."""
    network.eval()
    chunks = [network.encode_text(tokenizer(list(texts[i : i + batch_size])).to(device)).float().cpu()
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)


def prompt_class_embeddings(network: nn.Module, tokenizer, prompts: Mapping[str, Sequence[str]],
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """(C, D) zero-shot class embeddings: each class's prompt ensemble, averaged (``class_embeddings``)."""
    flat = [prompt for group in prompts.values() for prompt in group]
    features = embed_texts(network, tokenizer, flat, device=device)
    return class_embeddings(features.split([len(group) for group in prompts.values()]))
