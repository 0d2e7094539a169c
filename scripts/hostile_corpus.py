"""Generate the hostile-input corpus: broken, malicious and merely unusual files for every reader.

Seeded mutations of phantom chest X-ray DICOMs and of pydicom's own test files (truncated, bit-flipped,
overwritten, decompression bombs in the header, the codestream or a deflated dataset, wrong transfer syntax,
multi-frame, colour, CT, no pixel data, nonsense values), PNG/JPEG/TIFF/BMP/NIfTI oddities, EGD-CXR and
REFLACX gaze folders (NaN, negative durations, off-image, unsorted, empty, 10^6 rows, not UTF-8, DICOM
headers that are themselves broken) and reports (empty, not UTF-8, 1 MB). The same ``--seed`` and
``--count`` give byte-identical files; the corpus is generated on demand into a temporary folder and never
committed. ``manifest.json`` lists every case as ``{"path", "kind", "family"}``; ``kind`` says which entry
points read it (``dicom`` and ``image``: the image readers; ``egd`` and ``reflacx``: the gaze readers, a
folder; ``report``: report reading).

    python scripts/hostile_corpus.py --out /tmp/hostile --seed 0 --count 520

``--count`` is the number of mutated DICOMs; the rest is a fixed set of 217 cases (pydicom's 78 test files
as they are, two deflate bombs, a sparse 96 MiB file, 70 images, 50 gaze folders, 16 reports).
``--small`` keeps the 10^6-row gaze files at 10^4 rows (for quick runs).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from eclip_monai.data.formats import EGD_FIXATIONS_CSV, EGD_MASTER_SHEET_CSV, REFLACX_FIXATIONS_CSV
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.seeding import derive_seed

# pydicom's test files (the ones installed with it; nothing is downloaded): every file is a case as it is,
# and these are mutation bases too: every transfer syntax family, and CT, MR, colour, multi-frame
PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
PYDICOM_BASES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
    "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm",
    "examples_palette.dcm", "SC_ybr_full_422_uncompressed.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm",
    "liver_1frame.dcm", "JPEG-lossy.dcm",
)
BASE_SIZE = (96, 80)  # phantom images are cropped to this, so 500 mutants stay a few MB
GAZE_ROWS, GAZE_COLS = 400, 320  # the image size the gaze folders refer to
BIG_ROWS = 1_000_000


@dataclass(frozen=True)
class Case:
    path: str  # relative to the corpus root
    kind: str  # dicom | image | egd | reflacx | report
    family: str


class Corpus:
    """Writes cases under ``root`` and remembers them."""

    def __init__(self, root: Path, seed: int):
        self.root, self.seed, self.cases = root, seed, []

    def rng(self, *position: int, stream: str = "case") -> np.random.Generator:
        return np.random.default_rng(derive_seed(self.seed, stream, *position))

    def add(self, kind: str, family: str, name: str, content: bytes | Callable[[Path], None]) -> Path:
        path = self.root / kind / f"{len(self.cases):04d}_{family}_{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
        self.cases.append(Case(str(path.relative_to(self.root)), kind, family))
        return path


# --- DICOM bases --------------------------------------------------------------------------------------------


def dicom_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """The file's bytes; a mutant pydicom refuses to write (raw pixels under a compressed syntax) is written
    as explicit VR little endian instead."""
    buffer = io.BytesIO()
    try:
        if preamble:
            ds.save_as(buffer, enforce_file_format=True)
        else:
            ds.preamble = None
            ds.save_as(buffer)
    except ValueError:
        if ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian:
            raise
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return dicom_bytes(ds, preamble=preamble)
    return buffer.getvalue()


def phantom_bases(phantom: Path) -> list[Dataset]:
    """Phantom DICOMs cropped to ``BASE_SIZE`` (their tags, VOI and photometric variety kept), plain and in
    each compressed syntax the installed encoders write."""
    bases = []
    for path in sorted((phantom / "mimic-cxr" / "files").rglob("*.dcm"))[:4]:
        ds = pydicom.dcmread(path)
        rows, cols = BASE_SIZE
        top, left = (ds.Rows - rows) // 2, (ds.Columns - cols) // 2
        pixels = np.ascontiguousarray(ds.pixel_array[top:top + rows, left:left + cols])
        ds.Rows, ds.Columns, ds.PixelData = rows, cols, pixels.tobytes()
        bases.append(ds)
        for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
            compressed = copy.deepcopy(ds)
            compressed.compress(syntax, pixels, generate_instance_uid=False)
            bases.append(compressed)
    baseline = copy.deepcopy(bases[0])  # JPEG baseline: 8-bit, encoded by PIL and encapsulated
    pixels8 = (bases[0].pixel_array >> (int(bases[0].BitsStored) - 8)).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels8).save(jpeg, "JPEG", quality=90)
    baseline.BitsAllocated, baseline.BitsStored, baseline.HighBit = 8, 8, 7
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence", "RescaleSlope", "RescaleIntercept"):
        baseline.pop(keyword, None)
    baseline.PixelData = encapsulate([jpeg.getvalue()])
    baseline["PixelData"].VR = "OB"
    baseline.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    bases.append(baseline)
    for name in PYDICOM_BASES:
        bases.append(pydicom.dcmread(PYDICOM_TEST_FILES / name))
    return bases


def pixel_offset(data: bytes) -> int:
    """Byte offset of the (7FE0,0010) Pixel Data tag in little- or big-endian encoding (else the length)."""
    offsets = [i for i in (data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10")) if i > 0]
    return min(offsets) if offsets else len(data)


# --- DICOM mutations: each takes (base dataset, its bytes, rng) and returns (name, bytes) ----------------


def truncated(ds, data, rng):
    header = rng.random() < 0.5
    cut = int(rng.integers(0, min(len(data), 2048) if header else len(data)))
    return f"at{cut}", data[:cut]


def bitflip(ds, data, rng):
    data, header = bytearray(data), max(pixel_offset(data) + 12, 140)
    flips = int(rng.integers(1, 33))
    for _ in range(flips):
        i = int(rng.integers(128, header)) if rng.random() < 0.8 else int(rng.integers(0, len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    return f"{flips}bits", bytes(data)


def garbage(ds, data, rng):
    data = bytearray(data)
    start = int(rng.integers(132, max(pixel_offset(data), 140)))
    span = int(rng.integers(1, 65))
    data[start:start + span] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
    return f"at{start}", bytes(data)


BOMB_SHAPES = ((65535, 65535), (30000, 30000), (8192, 8192), (1, 65535), (65535, 1), (2, 4000))


def bomb_dims(ds, data, rng):
    ds = copy.deepcopy(ds)
    rows, cols = BOMB_SHAPES[int(rng.integers(len(BOMB_SHAPES)))]
    ds.Rows, ds.Columns = rows, cols
    if rng.random() < 0.3:
        ds.NumberOfFrames = int(rng.choice([1000, 65535, 2**31 - 1]))
    if rng.random() < 0.2:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    return f"{rows}x{cols}", dicom_bytes(ds)


def codestream_bomb(ds, data, rng):
    """A compressed frame whose own header declares a huge image (the DICOM header stays small)."""
    frame = bytearray(next(pydicom.encaps.generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0])
    size = int(rng.choice([20000, 60000, 65535]))
    sof = next((i for i in range(2, len(frame) - 9) if frame[i] == 0xFF and frame[i + 1] in (0xC0, 0xC1, 0xC3,
                                                                                             0xF7)), None)
    soc = frame.find(b"\xff\x4f\xff\x51")
    if soc >= 0:
        frame[soc + 8:soc + 16] = struct.pack(">II", size, size)
    elif sof is not None:
        frame[sof + 5:sof + 9] = struct.pack(">HH", size, size)
    else:
        return "none", data
    ds = copy.deepcopy(ds)
    ds.PixelData = encapsulate([bytes(frame)])
    return f"{size}", dicom_bytes(ds)


SYNTAXES = (ExplicitVRBigEndian, ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit,
            RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.4.92",
            "1.2.3.4", "not-a-uid", "")


def wrong_syntax(ds, data, rng):
    """The file meta names another transfer syntax; the dataset keeps its original encoding."""
    syntax = SYNTAXES[int(rng.integers(len(SYNTAXES)))]
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=False)
    name = str(syntax).replace(".", "_")[:24] or "empty"
    return name, data[:128] + b"DICM" + buffer.getvalue() + data[132 + len(_meta_bytes(data)):]


def _meta_bytes(data: bytes) -> bytes:
    """The file meta group (0002,xxxx) of a file with preamble, from its group length."""
    length = struct.unpack("<I", data[140:144])[0] if data[132:136] == b"\x02\x00\x00\x00" else 0
    return data[132:144 + length]


def multiframe(ds, data, rng):
    ds = copy.deepcopy(ds)
    frames = int(rng.integers(2, 5))
    ds.NumberOfFrames = frames
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated and rng.random() < 0.7:
        ds.PixelData = bytes(ds.PixelData) * frames
    return f"{frames}frames", dicom_bytes(ds)


def colour(ds, data, rng):
    ds = copy.deepcopy(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    style = ["rgb", "ybr", "palette", "rgb_label_only", "rgba"][int(rng.integers(5))]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence", "RescaleSlope", "RescaleIntercept"):
        ds.pop(keyword, None)
    if style in ("rgb", "ybr", "rgba"):
        samples = 4 if style == "rgba" else 3
        pixels = rng.integers(0, 256, (rows, cols, samples), dtype=np.uint8)
        ds.SamplesPerPixel, ds.PlanarConfiguration = samples, 0
        ds.PhotometricInterpretation = {"rgb": "RGB", "ybr": "YBR_FULL", "rgba": "ARGB"}[style]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
    elif style == "palette":
        ds.PhotometricInterpretation = "PALETTE COLOR"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rng.integers(0, 256, (rows, cols), dtype=np.uint8).tobytes()
        for offset in range(3):  # red, green, blue descriptors (0028,1101..3) and data (0028,1201..3)
            ds.add_new(0x00281101 + offset, "US", [256, 0, 8])
            ds.add_new(0x00281201 + offset, "OW", bytes(range(256)))
    else:
        ds.PhotometricInterpretation = "RGB"  # says colour, stores one sample
    return style, dicom_bytes(ds)


def ct_slice(ds, data, rng):
    """A CT slice (HU values with rescale) where a chest X-ray is expected: it may load; it must not crash."""
    ds = copy.deepcopy(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.pop("VOILUTSequence", None)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.PixelData = rng.integers(0, 4096, (rows, cols), dtype=np.uint16).tobytes()
    ds.SliceThickness, ds.ImagePositionPatient = 1.25, [0, 0, -100]
    return "hu", dicom_bytes(ds)


def no_pixels(ds, data, rng):
    ds = copy.deepcopy(ds)
    style = ["deleted", "empty", "one_byte", "pixel_as_float"][int(rng.integers(4))]
    if style == "deleted":
        del ds.PixelData
    elif style == "empty":
        ds.PixelData = b""
    elif style == "one_byte":
        ds.PixelData = b"\x00\x00"
    else:
        del ds.PixelData
        ds.FloatPixelData = bytes(16)
    return style, dicom_bytes(ds)


BAD_VALUES = (
    ("WindowWidth", "0"), ("WindowWidth", "-100"), ("WindowWidth", "nan"), ("WindowCenter", "abc"),
    ("WindowWidth", "1e308"), ("RescaleSlope", "nan"), ("RescaleSlope", "inf"), ("RescaleSlope", "0"),
    ("RescaleSlope", "1e308"), ("RescaleIntercept", "x"), ("BitsStored", 0), ("BitsStored", 40),
    ("HighBit", 99), ("PixelRepresentation", 7), ("PhotometricInterpretation", "MONOCHROME3"),
    ("PhotometricInterpretation", ""), ("PixelSpacing", "a\\b"), ("PixelSpacing", "-1\\0"),
    ("ImagerPixelSpacing", "nan\\inf"), ("VOILUTFunction", "CUBIC"), ("BitsAllocated", 12),
    ("BitsAllocated", 1),
    ("SamplesPerPixel", 0), ("NumberOfFrames", "-5"), ("NumberOfFrames", "zero"), ("Rows", 0),
    ("Columns", "many"), ("ViewPosition", "\x00" * 8), ("VOILUTSequence", "broken_lut"),
    ("ModalityLUTSequence", "broken_lut"), ("VOILUTSequence", "huge_lut"),
)


def bad_value(ds, data, rng):
    keyword, value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
    ds = copy.deepcopy(ds)
    if value in ("broken_lut", "huge_lut"):
        item = Dataset()
        entries, first = (0, 2**15) if value == "huge_lut" else (4096, -50)
        item.add_new(0x00283002, "SS" if first < 0 else "US", [entries, first, 16])
        item.add_new(0x00283006, "US", [1, 2, 3])
        setattr(ds, keyword, pydicom.Sequence([item]))
    else:
        vr = pydicom.datadict.dictionary_VR(keyword)
        if isinstance(value, str) and vr not in ("CS", "LO", "SH", "ST", "LT", "UT"):
            vr = "LO"  # text where a number belongs: written as text, read back as text
        element = pydicom.DataElement(pydicom.datadict.tag_for_keyword(keyword), vr, value)
        ds[element.tag] = element
    return f"{keyword}", dicom_bytes(ds)


def no_preamble(ds, data, rng):
    return "raw", dicom_bytes(copy.deepcopy(ds), preamble=False)


def not_dicom(ds, data, rng):
    style = ["empty", "random", "text", "dicm_only", "png_as_dcm"][int(rng.integers(5))]
    content = {"empty": b"", "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
               "text": b"this is not a chest x-ray\n" * 20, "dicm_only": bytes(128) + b"DICM",
               "png_as_dcm": _png(rng.integers(0, 256, (16, 16), dtype=np.uint8))}[style]
    return style, content


MUTATIONS = {  # family -> (mutation, weight)
    "truncated": (truncated, 14), "bitflip": (bitflip, 20), "garbage": (garbage, 10),
    "bomb_dims": (bomb_dims, 8), "codestream_bomb": (codestream_bomb, 4), "wrong_syntax": (wrong_syntax, 8),
    "multiframe": (multiframe, 5), "colour": (colour, 5), "ct": (ct_slice, 4), "no_pixels": (no_pixels, 5),
    "bad_value": (bad_value, 14), "no_preamble": (no_preamble, 2), "not_dicom": (not_dicom, 3),
}


def write_dicoms(corpus: Corpus, bases: list[Dataset], count: int) -> None:
    families = list(MUTATIONS)
    weights = np.array([MUTATIONS[f][1] for f in families], float)
    encoded = [dicom_bytes(b) for b in bases]
    compressed = [i for i, b in enumerate(bases) if b.file_meta.TransferSyntaxUID in
                  (JPEGLSLossless, JPEG2000Lossless, JPEGBaseline8Bit)]
    for index in range(count):
        rng = corpus.rng(index, stream="dicom")
        family = families[index] if index < len(families) else \
            str(rng.choice(families, p=weights / weights.sum()))  # every family once, then by weight
        pool = compressed if family == "codestream_bomb" else range(len(bases))
        base = int(rng.choice(list(pool)))
        name, content = MUTATIONS[family][0](bases[base], encoded[base], rng)
        corpus.add("dicom", family, f"b{base:02d}_{name}.dcm", content)
    write_dicom_specials(corpus)
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        corpus.add("dicom", "pydicom_original", path.name, path.read_bytes())


def write_dicom_specials(corpus: Corpus) -> None:
    """Bombs that need streaming to build: deflated datasets inflating to 128 MiB and 1 GiB, and a 96 MiB
    sparse file (a few KB on disk)."""
    for rows, cols in ((8192, 8192), (32768, 16384)):
        corpus.add("dicom", "deflate_bomb", f"{rows}x{cols}.dcm", _deflate_bomb(rows, cols))
    def sparse(path: Path) -> None:
        header = dicom_bytes(_tiny_dataset(4, 4))
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(96 * 2**20)
    corpus.add("dicom", "oversized", "sparse_96MiB.dcm", sparse)


def _tiny_dataset(rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(rows * cols * 2)
    return ds


def _deflate_bomb(rows: int, cols: int) -> bytes:
    """A deflated-syntax file whose dataset is a rows x cols 16-bit image of zeros. Each 4 MiB of zeros is
    deflated after a full flush (which resets the compressor), so one compressed chunk repeats for all."""
    header = _tiny_dataset(1, 1)
    header.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, header.file_meta)
    header.Rows, header.Columns = rows, cols
    del header.PixelData
    body = pydicom.filebase.DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    pydicom.filewriter.write_dataset(body, header)
    raw = body.getvalue()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [bytes(128), b"DICM", meta.getvalue()]
    out.append(deflater.compress(raw + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", rows * cols * 2)))
    out.append(deflater.flush(zlib.Z_FULL_FLUSH))
    zeros = bytes(2**22)
    chunk = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    out.extend([chunk] * (rows * cols * 2 // len(zeros)))
    out.append(deflater.flush())
    return b"".join(out)


# --- PNG / JPEG / TIFF / BMP / NIfTI ------------------------------------------------------------------------


def _png(pixels: np.ndarray, mode: str | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG", **options) if mode else \
        Image.fromarray(pixels).save(buffer, "PNG", **options)
    return buffer.getvalue()


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid PNG header declaring ``width x height`` with a tiny (truncated) image stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    idat = zlib.compress(bytes(64 * 1024), 9)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _nifti(data: np.ndarray, gz: bool = False, **header) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = nibabel.Nifti1Image(data, np.eye(4))
        for key, value in header.items():
            image.header[key] = value
        raw = image.to_bytes()
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return write


def _patched(content: bytes, offset: int, value: bytes) -> bytes:
    return content[:offset] + value + content[offset + len(value):]


def write_images(corpus: Corpus) -> None:
    rng = corpus.rng(0, stream="image")
    gray = (np.add.outer(np.arange(64), np.arange(48)) * 2).astype(np.uint8)
    gray16 = gray.astype(np.uint16) * 257
    rgb = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    png = _png(gray)
    jpeg = _save(Image.fromarray(gray), "JPEG", quality=85)
    add = corpus.add
    add("image", "png_ok", "gray8.png", png)
    add("image", "png_ok", "gray16.png", _png(gray16))
    add("image", "png_ok", "rgb.png", _png(rgb))
    add("image", "png_ok", "rgba.png", _png(np.dstack([rgb, gray])))
    add("image", "png_ok", "palette.png", _save(Image.fromarray(rgb).convert("P"), "PNG"))
    add("image", "png_ok", "bilevel.png", _save(Image.fromarray(gray > 100), "PNG"))
    add("image", "png_ok", "la.png", _save(Image.fromarray(np.dstack([gray, gray])), "PNG"))
    add("image", "png_ok", "constant.png", _png(np.zeros((32, 32), np.uint8)))
    add("image", "png_ok", "one_pixel.png", _png(np.zeros((1, 1), np.uint8)))
    add("image", "png_ok", "interlaced.png", _save(Image.fromarray(gray), "PNG", optimize=False))
    add("image", "png_bomb", "60000x60000.png", _png_bomb(60000, 60000))
    add("image", "png_bomb", "12000x12000.png", _png_bomb(12000, 12000, 8))
    add("image", "png_bomb", "strip_1x20000.png", _png(np.zeros((1, 20000), np.uint8)))
    add("image", "png_bomb", "strip_20000x1.png", _png(np.zeros((20000, 1), np.uint8)))
    for i, cut in enumerate((8, 20, 40, len(png) // 2, len(png) - 12)):
        add("image", "png_truncated", f"cut{cut}.png", png[:cut])
    for i in range(6):
        data = bytearray(png)
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(8, len(data)))] ^= 1 << int(rng.integers(8))
        add("image", "png_bitflip", f"{i}.png", bytes(data))
    add("image", "png_odd", "empty.png", b"")
    add("image", "png_odd", "text.png", b"not an image\n")
    add("image", "png_odd", "jpeg_named_png.png", jpeg)
    add("image", "png_odd", "gif_named_png.png", _save(Image.fromarray(gray), "GIF"))
    add("image", "png_odd", "bad_crc.png", _patched(png, 29, b"\x00\x00\x00\x00"))
    add("image", "tiff", "int32.tif", _save(Image.fromarray(gray.astype(np.int32) * 1000), "TIFF"))
    add("image", "jpeg_ok", "gray.jpg", jpeg)
    add("image", "jpeg_ok", "rgb.jpg", _save(Image.fromarray(rgb), "JPEG"))
    add("image", "jpeg_ok", "cmyk.jpg", _save(Image.fromarray(rgb).convert("CMYK"), "JPEG"))
    add("image", "jpeg_ok", "progressive.jpg", _save(Image.fromarray(gray), "JPEG", progressive=True))
    sof = jpeg.find(b"\xff\xc0")
    add("image", "jpeg_bomb", "sof_65000.jpg", _patched(jpeg, sof + 5, struct.pack(">HH", 65000, 65000)))
    add("image", "jpeg_bomb", "sof_9000.jpg", _patched(jpeg, sof + 5, struct.pack(">HH", 9000, 9000)))
    for cut in (2, 100, len(jpeg) // 2):
        add("image", "jpeg_truncated", f"cut{cut}.jpg", jpeg[:cut])
    for i in range(4):
        data = bytearray(jpeg)
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(2, len(data)))] ^= 1 << int(rng.integers(8))
        add("image", "jpeg_bitflip", f"{i}.jpg", bytes(data))
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    add("image", "tiff", "multipage.tif", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    add("image", "tiff", "float32.tif", _save(Image.fromarray(gray.astype(np.float32) / 7), "TIFF"))
    add("image", "tiff", "float_nan.tif", _save(Image.fromarray(np.full((8, 8), np.nan, np.float32)), "TIFF"))
    bmp = _save(Image.fromarray(gray), "BMP")
    add("image", "bmp_bomb", "60000x60000.bmp", _patched(bmp, 18, struct.pack("<ii", 60000, 60000)))
    add("image", "bmp_bomb", "negative.bmp", _patched(bmp, 18, struct.pack("<ii", -5, -5)))
    plane = gray.T.astype(np.float32)  # NIfTI stores (x, y)
    add("image", "nifti_ok", "float.nii", _nifti(plane))
    add("image", "nifti_ok", "int16.nii.gz", _nifti(plane.astype(np.int16), gz=True))
    add("image", "nifti_ok", "constant.nii", _nifti(np.zeros((8, 8), np.float32)))
    add("image", "nifti_odd", "volume.nii", _nifti(np.zeros((16, 16, 5), np.float32)))
    add("image", "nifti_odd", "4d.nii", _nifti(np.zeros((8, 8, 1, 3), np.float32)))
    add("image", "nifti_odd", "nan.nii", _nifti(np.full((8, 8), np.nan, np.float32)))
    add("image", "nifti_odd", "inf.nii", _nifti(np.array([[np.inf, -np.inf], [0, 1]], np.float32)))
    add("image", "nifti_odd", "scl_nan.nii", _nifti(plane.astype(np.int16), scl_slope=np.nan))
    add("image", "nifti_odd", "complex.nii", _nifti(np.zeros((8, 8), np.complex64)))
    add("image", "nifti_odd", "rgb.nii", _nifti(np.zeros((8, 8), [("R", "u1"), ("G", "u1"), ("B", "u1")])))
    tiny = nibabel.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)).to_bytes()
    dims = lambda *d: struct.pack("<8h", len(d), *d, *([1] * (7 - len(d))))  # noqa: E731
    add("image", "nifti_bomb", "declares_30000x30000.nii", _patched(tiny, 40, dims(30000, 30000)))
    add("image", "nifti_bomb", "declares_volume.nii", _patched(tiny, 40, dims(4096, 4096, 4096)))
    add("image", "nifti_bomb", "gz_declares_8192.nii.gz", gzip.compress(_patched(tiny, 40, dims(8192, 8192)),
                                                                          mtime=0))
    add("image", "nifti_bomb", "negative_dim.nii", _patched(tiny, 40, dims(-4, 4)))
    add("image", "nifti_bomb", "strip.nii", _nifti(np.zeros((1, 30000), np.uint8)))
    add("image", "nifti_bomb", "bad_datatype.nii", _patched(tiny, 70, struct.pack("<h", 12345)))
    add("image", "nifti_bomb", "vox_offset_huge.nii", _patched(tiny, 108, struct.pack("<f", 1e12)))
    add("image", "nifti_odd", "truncated.nii", tiny[:200])
    add("image", "nifti_odd", "not_gzip.nii.gz", tiny)
    add("image", "nifti_odd", "truncated_gz.nii.gz", gzip.compress(tiny, mtime=0)[:60])
    add("image", "other", "unknown_suffix.xyz", png)


# --- gaze folders -------------------------------------------------------------------------------------------


def _csv(columns: list[str], rows: np.ndarray | list) -> bytes:
    lines = [",".join(columns)]
    lines += [",".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _egd_rows(rng, n: int, rows=GAZE_ROWS, cols=GAZE_COLS, pads=(0, 0, 40, 40)) -> np.ndarray:
    top, bottom, left, right = pads
    fx, fy = rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.9, n)
    x_original = fx * (cols + left + right) - left
    y_original = fy * (rows + top + bottom) - top
    return np.stack([fx, fy, rng.uniform(0.05, 0.6, n), np.ones(n), x_original, y_original], axis=1)


EGD_COLUMNS = ["DICOM_ID", "FPOGX", "FPOGY", "FPOGD", "FPOGV", "X_ORIGINAL", "Y_ORIGINAL"]
SHEET_COLUMNS = ["dicom_id", "path", "image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad"]


def _egd_folder(fixations: bytes | None, sheet: bytes | None) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.mkdir()
        if fixations is not None:
            (path / EGD_FIXATIONS_CSV).write_bytes(fixations)
        if sheet is not None:
            (path / EGD_MASTER_SHEET_CSV).write_bytes(sheet)
    return write


def _egd_table(values: np.ndarray, dicom_id: str = "img0", fmt: str = "{:.6g}") -> bytes:
    rows = [[dicom_id, *(fmt.format(v) for v in row)] for row in values]
    return _csv(EGD_COLUMNS, rows)


def write_egd(corpus: Corpus, big_rows: int, dicom_cases: list[Path]) -> None:
    rng = corpus.rng(0, stream="egd")
    sheet = _csv(SHEET_COLUMNS, [["img0", "", 0, 0, 40, 40]])
    good = _egd_rows(rng, 40)
    def add(family, fixations, sheet_=sheet):
        corpus.add("egd", family, "root", _egd_folder(fixations, sheet_))

    add("ok", _egd_table(good))
    nan = good.copy()
    nan[::3, 0], nan[1::4, 2] = np.nan, np.nan
    add("nan", _egd_table(nan))
    negative = good.copy()
    negative[:, 2] *= -1
    add("negative_duration", _egd_table(negative))
    off = good.copy()
    off[:, 0], off[:, 4] = 5.0, 5.0 * (GAZE_COLS + 80) - 40
    add("off_image", _egd_table(off))
    add("unsorted", _egd_table(good[rng.permutation(len(good))]))
    add("empty", b"")
    add("header_only", _csv(EGD_COLUMNS, []))
    add("missing_file", None)
    add("missing_sheet", _egd_table(good), None)
    add("blank_pad", _egd_table(good), _csv(SHEET_COLUMNS, [["img0", "", "", 0, 40, 40]]))
    add("not_a_number", _egd_table(good).replace(b"0.", b"zz", 1))
    add("missing_column", _csv(EGD_COLUMNS[:3], [["img0", 0.5, 0.5]]))
    add("not_utf8", _egd_table(good).replace(b"img0", b"img\xff\xfe0"),
        _csv(SHEET_COLUMNS, [["img\xff0", "", 0, 0, 40, 40]]))
    add("binary", rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    add("unterminated_quote", _egd_table(good) + b'"img0,0.5,0.5\n')
    add("one_megabyte_cell", _egd_table(good) + b"img0," + b"9" * 2**20 + b",0.5,0.3,1,1,1\n")
    add("infinite", _egd_table(np.where(good > 0.5, np.inf, good)))
    add("mismatching_original", _egd_table(np.column_stack([good[:, :4], good[:, 4:] * 3 + 50])),
        _csv(SHEET_COLUMNS, [["img0", "", 0, 0, 40, 40]]))
    add(f"rows_{big_rows}", _egd_table(_egd_rows(rng, big_rows), fmt="{:.4g}"))
    # no X_ORIGINAL: the size is read from the DICOM header of the sheet's path, which is itself hostile;
    # the path is relative to the EGD-CXR folder (root/egd/<case>), as the reader resolves it
    columns = EGD_COLUMNS[:5]
    for dicom in dicom_cases:
        table = _csv(columns, [["img0", *(f"{v:.4g}" for v in row[:4])] for row in good])
        relative = Path("..", "..", dicom.relative_to(corpus.root)).as_posix()
        corpus.add("egd", "dicom_header", dicom.stem, _egd_folder(
            table, _csv(SHEET_COLUMNS, [["img0", relative, 0, 0, 40, 40]])))


REFLACX_META = ["id", "dicom_id", "eye_tracking_data_discarded", "image_size_x", "image_size_y"]
REFLACX_FIX = ["x_position", "y_position", "timestamp_start_fixation", "timestamp_end_fixation",
               "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree",
               "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
               "ymax_shown_from_image"]


def _reflacx_rows(rng, n: int) -> np.ndarray:
    start = np.cumsum(rng.uniform(0.1, 0.5, n))
    return np.stack([rng.uniform(0, GAZE_COLS, n), rng.uniform(0, GAZE_ROWS, n), start,
                     start + rng.uniform(0.05, 0.4, n), np.full(n, 40.0), np.full(n, 41.0), np.zeros(n),
                     np.zeros(n), np.full(n, GAZE_COLS), np.full(n, GAZE_ROWS)], axis=1)


def _reflacx_folder(fixations: bytes | None, metadata: bytes | None) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        (path / "main_data").mkdir(parents=True)
        if metadata is not None:
            (path / "main_data" / "metadata_phase_3.csv").write_bytes(metadata)
        if fixations is not None:
            target = path / REFLACX_FIXATIONS_CSV.format(id="P300R000")
            target.parent.mkdir(parents=True)
            target.write_bytes(fixations)
    return write


def write_reflacx(corpus: Corpus, big_rows: int) -> None:
    rng = corpus.rng(0, stream="reflacx")
    meta = _csv(REFLACX_META, [["P300R000", "img0", "False", GAZE_COLS, GAZE_ROWS]])
    good = _reflacx_rows(rng, 40)
    def table(values, fmt="{:.6g}"):
        return _csv(REFLACX_FIX, [[fmt.format(v) for v in row] for row in values])

    def add(family, fixations, meta_=meta):
        corpus.add("reflacx", family, "root", _reflacx_folder(fixations, meta_))

    add("ok", table(good))
    nan = good.copy()
    nan[::2, 0], nan[1::3, 3] = np.nan, np.nan
    add("nan", table(nan))
    negative = good.copy()
    negative[:, 3] = negative[:, 2] - 0.2
    add("negative_duration", table(negative))
    off = good.copy()
    off[:, 0] = -50.0
    add("off_image", table(off))
    add("unsorted", table(good[rng.permutation(len(good))]))
    add("empty", b"")
    add("header_only", _csv(REFLACX_FIX, []))
    add("missing_fixations", None)
    add("missing_metadata", table(good), None)
    add("zero_image_size", table(good), _csv(REFLACX_META, [["P300R000", "img0", "False", 0, 0]]))
    add("nan_image_size", table(good), _csv(REFLACX_META, [["P300R000", "img0", "False", "nan", 100]]))
    add("huge_image_size", table(good), _csv(REFLACX_META, [["P300R000", "img0", "False", 10**12, 10**12]]))
    add("bad_flag", table(good), _csv(REFLACX_META, [["P300R000", "img0", "maybe", GAZE_COLS, GAZE_ROWS]]))
    add("path_in_id", table(good), _csv(REFLACX_META, [["../../../etc", "img0", "False", GAZE_COLS,
                                                         GAZE_ROWS]]))
    add("not_utf8", table(good).replace(b"x_position", b"x_posi\xfftion"))
    add("binary", rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    add("not_a_number", table(good).replace(b".", b"#", 3))
    add("shown_region_inverted", table(np.column_stack([good[:, :6], np.full((len(good), 2), 300.0),
                                                         np.zeros((len(good), 2))])))
    add(f"rows_{big_rows}", table(_reflacx_rows(rng, big_rows), "{:.5g}"))


# --- reports ------------------------------------------------------------------------------------------------


def write_reports(corpus: Corpus) -> None:
    rng = corpus.rng(0, stream="report")
    normal = "FINDINGS: The heart size is normal. The lungs are clear.\nIMPRESSION: No acute process.\n"
    words = np.array("heart lungs clear effusion opacity normal size pleural no acute the is".split())
    megabyte = "FINDINGS: " + " ".join(rng.choice(words, 180_000)) + "\nIMPRESSION: fine.\n"
    add = lambda family, content, name="report.txt": corpus.add("report", family, name, content)  # noqa: E731
    add("ok", normal.encode())
    add("empty", b"")
    add("whitespace", b" \n\t\r\n   \n")
    add("no_sections", b"Some text without any heading at all.")
    add("empty_sections", b"FINDINGS:\nIMPRESSION:\n")
    add("latin1", "FINDINGS: Cœur normal, épanchement absent.\n".encode("latin-1", "replace"))
    add("utf16", normal.encode("utf-16"))
    add("random_bytes", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add("nul_bytes", normal.encode().replace(b" ", b"\x00"))
    add("one_megabyte", megabyte.encode())
    add("one_megabyte_line", ("FINDINGS: " + "x" * 2**20).encode())
    add("one_megabyte_headings", ("ABC DEF:\n" * (2**20 // 9)).encode())
    add("heading_backtracking", (("A" * 39 + " ") * 30000 + "\n").encode())
    add("control_characters", ("FINDINGS: " + "".join(chr(c) for c in range(32)) * 100).encode())
    add("surrogates", "FINDINGS: \ud800 broken".encode("utf-8", "surrogatepass"))
    add("directory", lambda path: path.mkdir())


def generate(out: str | os.PathLike, seed: int = 0, count: int = 520, big_rows: int = BIG_ROWS) -> list[Case]:
    """Write the corpus into ``out`` (emptied first) and return its cases; see the module docstring."""
    root = Path(out)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE  # bad values are the point
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    corpus = Corpus(root, seed)
    phantom = ensure_phantom(root / "_phantom", studies=4, seed=seed, workers=1, eval_size=2, progress=False)
    write_dicoms(corpus, phantom_bases(phantom), count)
    # EGD-CXR folders whose master sheet points at hostile DICOMs: both bombs and ten broken headers
    broken = [root / c.path for c in corpus.cases
              if c.family in ("truncated", "bitflip", "garbage", "bad_value")]
    picks = corpus.rng(0, stream="egd-dicoms").choice(len(broken), size=min(10, len(broken)), replace=False)
    headers = [root / c.path for c in corpus.cases if c.family == "deflate_bomb"]
    headers += [broken[i] for i in sorted(picks)]
    write_images(corpus)
    write_egd(corpus, big_rows, headers)
    write_reflacx(corpus, big_rows)
    write_reports(corpus)
    shutil.rmtree(root / "_phantom")
    (root / "manifest.json").write_text(json.dumps({"seed": seed, "count": count, "big_rows": big_rows,
                                                    "cases": [asdict(c) for c in corpus.cases]}, indent=1))
    return corpus.cases


def load_manifest(root: str | os.PathLike) -> list[Case]:
    return [Case(**c) for c in json.loads((Path(root) / "manifest.json").read_text())["cases"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to (re)create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=520, help="mutated DICOMs")
    parser.add_argument("--small", action="store_true", help="10^4, not 10^6, rows in the big gaze files")
    args = parser.parse_args(argv)
    cases = generate(args.out, args.seed, args.count, 10_000 if args.small else BIG_ROWS)
    kinds = {k: sum(c.kind == k for c in cases) for k in dict.fromkeys(c.kind for c in cases)}
    print(f"{len(cases)} cases in {args.out}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))


if __name__ == "__main__":
    main()
