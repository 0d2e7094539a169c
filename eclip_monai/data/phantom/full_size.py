"""Full-size films: a drawn study brought to a detector's pixel count and bit depth.

The phantom is drawn at ~400 px because that is all the network ever sees (the pipelines resize to 224).
What a full-size MIMIC-CXR DICOM changes is the *data path*: reading, decoding, VOI and resizing ~7 Mpx of
12-bit samples costs one to two orders of magnitude more than the drawn film, and that cost is what
preprocessing and loader benchmarks must see. :func:`upscale_study` therefore enlarges each drawn image by an
integer ``factor`` (bicubic), adds independent per-pixel noise at the new resolution, and rescales everything
measured in pixels (finding ellipses, device boxes, the gaze reading, millimetres per pixel) so that reports,
labels, EGD-CXR / REFLACX coordinates and the image still agree. With ``FULL_SIZE_UPSCALE`` the films are
2,240-3,136 rows × 2,016-2,968 columns (MIMIC-CXR's are mostly about 3,000 × 2,500), 12 bits stored in 16.

Realistic: the pixel count, the bit depth and its 16-bit container, the photometric interpretations, the VOI
tags and the transfer syntaxes (uncompressed, RLE and JPEG 2000 lossless), hence the order of the file sizes
(about 14 MB uncompressed) and the decode cost: the evaluation chain takes about 0.12 s of a core per film
uncompressed or RLE and 1.2-1.4 s as JPEG 2000, and writing one takes 0.3, 0.5 and 1.6 s (``bench_data.py
--full-size-only``). Not realistic: no structure finer than the drawn film's pixel (7 full-size pixels): no
trabeculae, fine vessels or sharp device edges; the drawn film's own noise becomes 7-pixel blobs; the added
noise is white and independent of the signal, where a detector's quantum mottle is coloured and stronger
where fewer photons arrive. So compression ratios (here 1.6× for RLE and 2.2× for JPEG 2000; real films
typically 2-3×) and anything learnt from fine texture differ from real films.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from eclip_monai.data.phantom.dicom_writer import PixelEncoding
from eclip_monai.data.phantom.gaze import Reading
from eclip_monai.data.phantom.study import PhantomImage, PhantomStudy

FULL_SIZE_UPSCALE = 7  # the drawn 320-448 x 288-416 px films become MIMIC-sized
FULL_SIZE_BITS = 12
DETECTOR_NOISE = 0.008  # standard deviation of the added per-pixel noise, in display brightness [0, 1]
_NOISE_KEY = 0x5EED  # spawn key of the noise's own seed, apart from the study's other format randomness


def with_bits_stored(encoding: PixelEncoding, bits: int) -> PixelEncoding:
    """``encoding`` with ``bits`` stored bits: the same brightness mapped onto the smaller (or larger)
    range."""
    scale = (2**bits - 1) / encoding.max_value
    return replace(encoding, bits_stored=bits, low=round(encoding.low * scale),
                   high=round(encoding.high * scale))


def upscale_study(study: PhantomStudy, factor: int, bits_stored: int | None = None) -> PhantomStudy:
    """``study`` with every image ``factor`` times larger (plus detector-scale noise) and, when given,
    ``bits_stored`` bits per stored sample. Pixel coordinates follow the pixel-centre convention of the
    resize (``x' = (x + 0.5)·factor − 0.5``); box edges and radii scale by ``factor``. The noise is drawn from
    a child of the study's format seed, so the same study gives the same film in any worker."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    seed = study.format_seed
    rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, _NOISE_KEY),
                                                       pool_size=seed.pool_size))
    images = [_upscale_image(image, factor, bits_stored, rng) for image in study.images]
    reading = study.reading
    if reading is not None and factor > 1:
        reading = Reading(_centre(reading.x, factor), _centre(reading.y, factor), reading.start,
                          reading.duration, reading.on_finding)
    return replace(study, images=images, reading=reading)


def _centre(value, factor: int):
    return (value + 0.5) * factor - 0.5


def _upscale_image(image: PhantomImage, factor: int, bits: int | None,
                   rng: np.random.Generator) -> PhantomImage:
    encoding = image.encoding if bits is None else with_bits_stored(image.encoding, bits)
    if factor == 1:
        return replace(image, encoding=encoding)
    rows, cols = image.rows * factor, image.cols * factor
    drawn = Image.fromarray(image.pixels.astype(np.float32), "F")
    pixels = np.asarray(drawn.resize((cols, rows), Image.BICUBIC))
    pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(DETECTOR_NOISE)
    findings = [replace(f, x=_centre(f.x, factor), y=_centre(f.y, factor), rx=f.rx * factor, ry=f.ry * factor)
                for f in image.findings]
    devices = [replace(d, box=tuple(int(v) * factor for v in d.box)) for d in image.devices]
    # chest=None: the drawn anatomy's grids stay at the drawn size, and nothing after drawing uses them
    return replace(image, pixels=np.clip(pixels, 0.0, 1.0), encoding=encoding, findings=findings,
                   devices=devices, mm_per_pixel=round(image.mm_per_pixel / factor, 5), chest=None)
