"""Preprocess once: MIMIC-CXR images decoded, VOI-applied and resized into shards that train without decoding.

A full-size MIMIC-CXR DICOM (~3,000 × 2,500 at 12 bits) takes a core a tenth of a second (uncompressed) to
over a second (JPEG 2000) to decode, apply the VOI and resize; a GPU training a Swin-T at 224² wants well over
a thousand images a second. The pixels a training run needs are the same every epoch, so they are computed
once, by the project's own transform chain, and stored as what the network's loader can use directly.

Format ``eclip-shards/1`` (the reader :class:`ShardSet` and a training stream rely on exactly this)::

    <out>/manifest.json     {"format", "image_size": S, "dtype": "uint8",
                             "shards": [{"name", "count", "sha256": {"images", "records"}, ...}, ...],
                             "skipped": [{"path", "reason", ...}], "settings": {...how it was made}, ...}
    <out>/<name>.npy        uint8 (count, S, S), written by ``np.save``: ``np.load(mmap_mode="r")`` maps it
    <out>/<name>.jsonl      one JSON record per row, same order: dicom_id, subject_id, study_id, split, view,
                            report, labels (floats, NaN as null), original_size [rows, cols] and, with gaze,
                            fixations [[x, y, duration_s], ...] in the shard's S × S pixels (x = column),
                            pixels_per_degree (rescaled likewise, or null) and gaze_source

Why this format:

- No decode on read: a row is S² bytes at a known offset of a memory-mapped file; reading one is a
  page-cache copy and a uint8 → float32 conversion (``ShardSet.read``), cheap enough for any number of
  DataLoader workers.
- Random access: any (shard, row) is addressable, so a stream can give each DDP rank and worker disjoint
  shards, shuffle within a buffer and resume from an exact position, without scanning an archive.
- Exact resume and idempotence: a shard is a deterministic function of its planned items (the sorted
  datalist cut into fixed-size pieces), written under a temporary name and renamed into place; the manifest,
  rewritten atomically after each finished shard, records its checksums. A rerun recomputes the plan, keeps
  every shard whose plan and checksums match, and rewrites the rest, so a killed run loses at most the shards
  in flight and never duplicates an image.
- Disk: S² bytes per image (66.6 kB at S = 258, 25 GB for MIMIC-CXR's 377,110 images) plus about 1 kB of
  record. JPEG in webdataset tars would be about 4-5× smaller (6 GB) and decode in ~0.3 ms per 258² image, but
  it is lossy (a shard would no longer equal the live chain), tars are read sequentially (no random access,
  resume by skipping), and a second encoder is a second thing to get right; next to the 5 TB of source DICOMs
  either size is small, so the format takes exactness and random access over the 4×. Reports, labels and gaze
  travel with their image in the record; gaze is stored as fixations, not as a heatmap, because the heatmap's
  σ is a training setting and rendering one costs about a millisecond.

Images are square: the writer's transform is the evaluation chain (shortest side to S, centre crop, which
drops about 8% at each end of a 3,000 × 2,500 film's longer side), so a shard image equals what live
decoding gives up to the uint8 quantisation (at most 0.5/255). Training crops
(``RandResizedCrop``) are then drawn from that S × S image; the default S = 258 is the pre-resize
``train_transforms(224)`` draws its crops from. Items are ordered by split, subject, study and dicom_id, and a
shard never mixes splits (``"split"`` in its manifest entry). An image whose DICOM cannot be read
(:class:`~eclip_monai.errors.CXRDataError`) is left out of its shard and listed under ``"skipped"``.

The transform is passed in (``write_shards(..., transform=transforms.pipelines.shard_transforms(S))``, as
``scripts/preprocess_shards.py`` does) because the transforms sit above this package.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eclip_monai.data.expert import build_expert_datalist
from eclip_monai.data.formats import FRONTAL_VIEWS
from eclip_monai.data.mimic import MIMIC_SPLITS, Datalist, build_mimic_datalist
from eclip_monai.data.robust import data_error
from eclip_monai.errors import CXRDataError
from eclip_monai.files import atomic_write
from eclip_monai.integrity import file_sha256

__all__ = ["DEFAULT_IMAGES_PER_SHARD", "DEFAULT_IMAGE_SIZE", "FORMAT", "MANIFEST", "ShardSet",
           "collect_items", "plan_shards", "write_shards"]

FORMAT = "eclip-shards/1"
MANIFEST = "manifest.json"
DEFAULT_IMAGE_SIZE = 258  # round(1.15 * 224): the pre-resize train_transforms(224) draws its crops from
DEFAULT_IMAGES_PER_SHARD = 1000  # 66 MB at 258²: hundreds of shards for MIMIC, enough for 8 ranks x 8 workers
SHARD_NAME = "shard-{:05d}"
_SHARD_FILE = re.compile(r"^\.?shard-\d{5}\.(npy|jsonl)(\.tmp)?$")
_LOCK = ".lock"
_ROUND = 4  # decimals of fixation coordinates (in S-pixel units) and durations in the records


# Reading


class ShardSet:
    """Read a shard set: metadata per shard, one image at a time from memory-mapped ``.npy`` files.

    Args:
        root: the folder holding ``manifest.json``.
        verify: check every shard file against the manifest's sha256 first (reads every byte once); a
            mismatch raises :class:`CXRDataError` naming the file.

    Attributes:
        root, manifest, image_size, shard_sizes (images per shard, in manifest order).

    Safe to hand to DataLoader workers: memory maps and cached records are opened per process, lazily.
    ``cache_shards`` bounds how many shards' records and memory maps a process holds (least recently used
    go first; ``None``: no bound), so a worker reading a whole epoch does not end up holding every record.
    """

    def __init__(self, root: str | os.PathLike, verify: bool = False, cache_shards: int | None = None):
        if cache_shards is not None and cache_shards < 1:
            raise ValueError(f"cache_shards: expected a number of shards >= 1 or None, found {cache_shards}")
        self.root = Path(root)
        self.manifest = _read_manifest(self.root / MANIFEST)
        self.image_size = int(self.manifest["image_size"])
        self.shard_sizes = [int(s["count"]) for s in self.manifest["shards"]]
        self.cache_shards = cache_shards
        self._names = [s["name"] for s in self.manifest["shards"]]
        self._ends = np.cumsum(self.shard_sizes).tolist()
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()
        self._records: OrderedDict[int, list[dict]] = OrderedDict()
        if verify:
            self.verify()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": OrderedDict(), "_records": OrderedDict()}

    @property
    def cached_shards(self) -> set[int]:
        """The shards whose records or memory map this process holds now."""
        return set(self._images) | set(self._records)

    def _cache(self, cache: OrderedDict, shard: int, value):
        cache[shard] = value
        if self.cache_shards is not None and len(cache) > self.cache_shards:
            cache.popitem(last=False)
        return value

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, row)`` of the ``index``-th image over all shards in manifest order."""
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images in {self.root}")
        shard = bisect.bisect_right(self._ends, index)
        return shard, index - (self._ends[shard - 1] if shard else 0)

    def records(self, shard: int) -> list[dict]:
        """The metadata records of ``shard`` (no pixels), parsed once and cached."""
        if shard in self._records:
            self._records.move_to_end(shard)
        else:
            path = self._path(shard, ".jsonl")
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
                records = [json.loads(line) for line in lines]
            except (OSError, ValueError) as exc:
                raise CXRDataError(f"expected a readable JSON-lines file, found {type(exc).__name__}: {exc}",
                                   path=path) from exc
            if len(records) != self.shard_sizes[shard]:
                raise CXRDataError(f"expected {self.shard_sizes[shard]} records as the manifest says, found "
                                   f"{len(records)}", path=path, field="count")
            self._cache(self._records, shard, records)
        return self._records[shard]

    def images(self, shard: int) -> np.ndarray:
        """The read-only, memory-mapped uint8 ``(count, S, S)`` array of ``shard``."""
        if shard in self._images:
            self._images.move_to_end(shard)
        else:
            path = self._path(shard, ".npy")
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                reason = f"expected a .npy array, found {type(exc).__name__}: {exc}"
                raise CXRDataError(reason, path=path) from exc
            expected = (self.shard_sizes[shard], self.image_size, self.image_size)
            if array.dtype != np.uint8 or array.shape != expected:
                raise CXRDataError(f"expected uint8 {expected}, found {array.dtype} {array.shape}", path=path,
                                   field="shape")
            self._cache(self._images, shard, array.view(np.ndarray))  # still the map, minus memmap's overhead
        return self._images[shard]

    def image(self, shard: int, row: int) -> np.ndarray:
        """Row ``row`` of ``shard`` as float32 (1, S, S) in [0, 1], without parsing its record."""
        return np.divide(self.images(shard)[row], np.float32(255), dtype=np.float32)[None]

    def read(self, shard: int, row: int) -> dict:
        """The record of ``row`` with ``"image"``: float32 (1, S, S) in [0, 1], and ``"fixations"`` as a
        float32 (F, 3) array where the image has gaze."""
        item = dict(self.records(shard)[row])
        item["image"] = self.image(shard, row)
        if item.get("fixations") is not None:
            item["fixations"] = np.asarray(item["fixations"], dtype=np.float32).reshape(-1, 3)
        return item

    def __getitem__(self, index: int) -> dict:
        return self.read(*self.locate(index))

    def verify(self) -> None:
        """Raise :class:`CXRDataError` naming the first shard file whose sha256 is not the manifest's."""
        for entry in self.manifest["shards"]:
            problem = _checksum_problem(self.root, entry)
            if problem:
                raise CXRDataError(problem[1], path=problem[0], field="sha256")

    def _path(self, shard: int, suffix: str) -> Path:
        if not 0 <= shard < len(self._names):
            raise IndexError(f"shard {shard} out of range for {len(self._names)} shards in {self.root}")
        return self.root / f"{self._names[shard]}{suffix}"


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = f"expected a shard manifest, found {type(exc).__name__}: {exc}"
        raise CXRDataError(reason, path=path) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CXRDataError(f"expected format {FORMAT!r}, found {found!r}", path=path, field="format")
    if manifest.get("dtype") != "uint8":
        raise CXRDataError(f"expected dtype 'uint8', found {manifest.get('dtype')!r}", path=path,
                           field="dtype")
    for key in ("image_size", "shards"):
        if key not in manifest:
            raise CXRDataError("expected this key, found none", path=path, field=key)
    return manifest


def _checksum_problem(root: Path, entry: Mapping) -> tuple[Path, str] | None:
    """``(file, what is wrong)`` for the first of a shard's files that is missing or differs from the
    manifest's sha256."""
    for kind, suffix in (("images", ".npy"), ("records", ".jsonl")):
        path = root / f"{entry['name']}{suffix}"
        if not path.is_file():
            return path, "expected the shard file the manifest lists, found none"
        found = file_sha256(path)
        if found != entry["sha256"][kind]:
            return path, (f"expected sha256 {entry['sha256'][kind]}, found {found} (the file changed or is "
                          "corrupt)")
    return None


# Planning


def collect_items(
    mimic_root: str | os.PathLike,
    egd_root: str | os.PathLike | None = None,
    reflacx_root: str | os.PathLike | None = None,
    splits: Sequence[str] = MIMIC_SPLITS,
    views: Sequence[str] | None = FRONTAL_VIEWS,
) -> Datalist:
    """The MIMIC-CXR datalist of ``splits`` and ``views`` with gaze (EGD-CXR and/or REFLACX, concatenated)
    merged into the items that have it; what the datalist left out stays counted on ``.skipped``."""
    datalist = build_mimic_datalist(mimic_root, splits=splits, views=views)
    expert = build_expert_datalist(datalist, egd_root=egd_root, reflacx_root=reflacx_root,
                                   mimic_root=mimic_root)
    gaze = {item["dicom_id"]: item for item in expert}
    items = Datalist(gaze.get(item["dicom_id"], item) for item in datalist)
    items.skipped, items.examples = datalist.skipped, datalist.examples
    return items


def plan_shards(items: Sequence[dict], images_per_shard: int,
                splits: Sequence[str] = MIMIC_SPLITS) -> list[tuple[str, str, list[dict]]]:
    """``(name, split, items)`` per shard: items sorted by split (in ``splits`` order), subject, study and
    dicom_id, cut into ``images_per_shard`` pieces, a new shard at each split. The same items always give
    the same plan, which is what makes a rerun find its finished shards."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    order = {split: i for i, split in enumerate(splits)}
    ids = [item["dicom_id"] for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("every item must have its own dicom_id; the datalist repeats some")
    ranked = sorted(items, key=lambda it: (order.get(it["split"], len(order)), str(it["split"]),
                                           int(it["subject_id"]), int(it["study_id"]), str(it["dicom_id"])))
    plan: list[tuple[str, str, list[dict]]] = []
    for item in ranked:
        if not plan or plan[-1][1] != item["split"] or len(plan[-1][2]) == images_per_shard:
            plan.append((SHARD_NAME.format(len(plan)), item["split"], []))
        plan[-1][2].append(item)
    return plan


def _plan_digest(items: Sequence[dict]) -> str:
    """sha256 of everything a shard is computed from except the pixels: a changed item means a new shard."""
    def key(item: dict) -> dict:
        fixations = item.get("fixations")
        return {"image": str(item["image"]), **_base_record(item),
                "fixations": None if fixations is None else np.asarray(fixations, float).tolist(),
                "pixels_per_degree": _number(item.get("pixels_per_degree")),
                "gaze_source": item.get("gaze_source")}

    keys = [key(item) for item in items]
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


# Writing


def write_shards(
    items: Sequence[dict],
    out: str | os.PathLike,
    transform: Callable[[dict], dict],
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    workers: int = 1,
    settings: Mapping | None = None,
    progress: bool = True,
    on_shard: Callable[[dict], None] | None = None,
    start_method: str = "spawn",
) -> dict:
    """Write (or finish, or check) the shard set of ``items`` under ``out``; return what happened.

    Args:
        items: datalist items (``collect_items``): ``image`` (a DICOM path), ids, split, view, report, labels
            and, with gaze, ``fixations`` / ``pixels_per_degree`` / ``gaze_source``.
        transform: turns ``{"image": path}`` into ``{"image": (1, S, S) MetaTensor in [0, 1]}`` whose meta has
            the loader's ``spatial_shape`` and ``spacing`` (``transforms.pipelines.shard_transforms(S)``).
        image_size: S, the side of every stored image (the transform must produce it).
        images_per_shard: planned images per shard (fewer where files are skipped, or at a split's end).
        workers: processes, one shard per task; the output does not depend on it.
        settings: how the set was made (source roots, splits, views...), recorded in the manifest; a rerun
            with different settings (or image size, or shard size) in the same folder is refused.
        on_shard: called with each shard's manifest entry once it is recorded (progress, tests).
        start_method: multiprocessing start method of the worker pool.

    Returns:
        ``{"manifest": ..., "written": [names], "reused": [names]}``.

    Raises:
        ValueError: ``out`` holds a shard set made with other settings.
        RuntimeError: another writer holds ``out``.
    """
    if image_size < 1 or workers < 1:
        raise ValueError(f"need image_size >= 1 and workers >= 1, got {image_size}, {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**(settings or {}), "image_size": int(image_size), "images_per_shard": int(images_per_shard)}
    plan = plan_shards(items, images_per_shard, settings.get("splits", MIMIC_SPLITS))
    names = {name for name, _, _ in plan}
    datalist = {"skipped": dict(getattr(items, "skipped", {}))}
    with _locked(out):
        previous = {name: entry for name, entry in _previous_entries(out, settings).items() if name in names}
        for stale in out.iterdir():  # left by a killed run: temporary files, shards the plan no longer has
            if _SHARD_FILE.match(stale.name) and (stale.name.endswith(".tmp") or
                                                  stale.name.split(".")[0] not in names):
                stale.unlink()
        # the earlier run's entries stay listed (the set incomplete) until each is checked or rewritten
        _write_manifest(out, _manifest(settings, plan, previous, datalist) | {"complete": False})
        tasks = [(name, split, shard_items, str(out), int(image_size), previous.get(name))
                 for name, split, shard_items in plan]
        done: dict[str, dict] = {}
        written, reused = [], []
        with tqdm(total=len(items), desc="shards", unit="img", disable=not progress) as bar:
            for entry in _run(tasks, transform, workers, start_method):
                (reused if entry.pop("reused") else written).append(entry["name"])
                done[entry["name"]] = entry
                _write_manifest(out, _manifest(settings, plan, done, datalist))
                bar.update(entry["planned"])
                if on_shard is not None:
                    on_shard(entry)
        manifest = _manifest(settings, plan, done, datalist)
        _write_manifest(out, manifest)
    return {"manifest": manifest, "written": sorted(written), "reused": sorted(reused)}


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One writer per folder: a second one would delete the first one's temporary files."""
    with open(out / _LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another shard writer is working in {out}; wait for it or choose another "
                               "folder") from None
        yield


def _previous_entries(out: Path, settings: dict) -> dict[str, dict]:
    """The manifest entries an earlier run recorded in ``out`` (none if it has no manifest)."""
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = _read_manifest(path)
    except CXRDataError as error:  # written whole or not at all, so an unreadable one is not a shard set's
        raise ValueError(f"{path} is not a shard manifest ({error.reason}); choose another folder, or delete "
                         "the file to write a shard set here") from error
    if manifest.get("settings") != json.loads(_dumps(settings)):
        raise ValueError(f"{out} holds shards made with settings {manifest.get('settings')}, not {settings}; "
                         "choose another folder (or delete this one) to make a different set")
    return {entry["name"]: entry for entry in manifest["shards"]}


def _manifest(settings: dict, plan: list, done: Mapping[str, dict], datalist: dict) -> dict:
    entries = [done[name] for name, _, _ in plan if name in done]
    return {
        "format": FORMAT, "image_size": settings["image_size"], "dtype": "uint8", "shards": entries,
        "skipped": [skip for entry in entries for skip in entry["skipped"]], "settings": settings,
        "complete": len(entries) == len(plan), "images": sum(entry["count"] for entry in entries),
        "datalist": datalist,
    }


def _write_manifest(out: Path, manifest: dict) -> None:
    atomic_write(out / MANIFEST, lambda handle: handle.write(_dumps(manifest)), what="shard manifest")


def _dumps(value) -> bytes:
    return (json.dumps(value, indent=1, allow_nan=False) + "\n").encode()


def _run(tasks: list[tuple], transform, workers: int, start_method: str) -> Iterator[dict]:
    if workers == 1 or len(tasks) <= 1:
        _init_worker(transform, set_threads=False)
        for task in tasks:
            yield _shard(task)
        return
    context = multiprocessing.get_context(start_method)
    with context.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(transform,)) as pool:
        yield from pool.imap_unordered(_shard, tasks)


_transform: Callable[[dict], dict] | None = None  # one per worker process, set by _init_worker


def _init_worker(transform, set_threads: bool = True) -> None:
    global _transform
    _transform = transform
    if set_threads:  # one core per worker: torch would otherwise start a thread per core in every worker
        import torch

        torch.set_num_threads(1)


def _shard(task: tuple) -> dict:
    """Check an existing shard against its recorded entry, or write it; return its manifest entry."""
    name, split, items, out, size, previous = task
    out = Path(out)
    digest = _plan_digest(items)
    if previous is not None and previous.get("plan") == digest and _checksum_problem(out, previous) is None:
        return {**previous, "reused": True}
    images = np.empty((len(items), size, size), dtype=np.uint8)
    records, skipped = [], []
    for item in items:
        try:
            result = _transform({"image": item["image"]})
        except Exception as exc:
            error = data_error(exc)
            if error is None:
                raise
            skipped.append({"path": str(item["image"]), "reason": error.reason, "field": error.field})
            continue
        image, record = _image_and_record(result["image"], item, size)
        images[len(records)] = image
        records.append(record)
    images = images[: len(records)]
    npy, jsonl = out / f"{name}.npy", out / f"{name}.jsonl"
    atomic_write(npy, lambda h: np.save(h, images), what=f"shard images {name}")
    atomic_write(jsonl, lambda h: h.write("".join(_dumps_line(r) for r in records).encode()),
                 what=f"shard records {name}")
    return {"name": name, "count": len(records),
            "sha256": {"images": file_sha256(npy), "records": file_sha256(jsonl)}, "split": split,
            "planned": len(items), "gaze": sum("fixations" in r for r in records), "plan": digest,
            "skipped": skipped, "reused": False}


def _image_and_record(image, item: dict, size: int) -> tuple[np.ndarray, dict]:
    """The uint8 S × S image and its record, gaze mapped into the S × S frame through the image's affine."""
    pixels = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if pixels.shape != (1, size, size):
        raise ValueError(f"the shard transform must return a (1, {size}, {size}) image, returned "
                         f"{pixels.shape}")
    meta = getattr(image, "meta", {})
    original = [int(v) for v in meta["spatial_shape"]]
    record = {**_base_record(item), "original_size": original}
    if item.get("fixations") is not None:
        linear, offset = _to_current_index(image, meta)
        fixations = np.asarray(item["fixations"], dtype=np.float64).reshape(-1, 3)
        rows, cols = linear @ fixations[:, [1, 0]].T + offset[:, None]  # (row, col) = (y, x)
        moved = np.stack([cols, rows, fixations[:, 2]], axis=1)
        ppd = _number(item.get("pixels_per_degree"))
        scale = math.sqrt(abs(float(np.linalg.det(linear))))  # the resize is isotropic up to rounding
        record |= {"fixations": np.round(moved, _ROUND).tolist(),
                   "pixels_per_degree": None if ppd is None else round(ppd * scale, _ROUND),
                   "gaze_source": item.get("gaze_source")}
    return np.rint(np.clip(pixels[0], 0.0, 1.0) * 255).astype(np.uint8), record


def _to_current_index(image, meta) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)`` with current (row, col) index = M · original (row, col) index + t, from the affine MONAI
    keeps through every resize and crop (pixel centres: ``x' = (x + 0.5)·s − 0.5`` for a resize, minus a
    crop's start) and the loader's own affine, diag(spacing)."""
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = np.asarray(meta.get("spacing", (1.0, 1.0)), dtype=np.float64)
    inverse = np.linalg.inv(affine[:2, :2])
    return inverse @ np.diag(spacing), -inverse @ affine[:2, -1]


def _base_record(item: dict) -> dict:
    return {"dicom_id": str(item["dicom_id"]), "subject_id": int(item["subject_id"]),
            "study_id": int(item["study_id"]), "split": str(item["split"]), "view": str(item.get("view", "")),
            "report": item.get("report"), "labels": [_number(v) for v in np.asarray(item["labels"]).ravel()]}


def _number(value) -> float | None:
    """A JSON number, or None for a missing value or NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _dumps_line(record: dict) -> str:
    return json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n"
