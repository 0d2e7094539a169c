"""Checksums of every file a packaged bundle ships, checked before its vendored code is imported.

``scripts/package_bundle.py`` writes ``checksums.sha256`` at the bundle root in ``sha256sum`` format (so
``sha256sum -c checksums.sha256`` verifies an unpacked bundle without Python), and every archived config puts
the bundle on ``sys.path`` through ``verified_on_path``. The configs load this file with ``runpy`` by path,
not as ``eclip_monai.integrity``: importing the package first would run vendored code before it is checked.
So this module uses the standard library only, and raises its own error type.

What this catches: a corrupted or partly extracted archive, a file edited after packaging, and a module or
``.pth``-style file added to the vendored package (it would run on import). What it cannot catch: someone who
edits a file *and* this manifest (or this module). The trust anchor for that is the archive's own sha256,
published next to the archive (``<archive>.sha256``) and checked before unpacking (docs/security.md).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

CHECKSUMS_FILE = "checksums.sha256"
VENDORED_PACKAGE = "eclip_monai"
_IGNORED_DIRS = {"__pycache__"}  # Python writes bytecode caches next to the vendored modules on import


class BundleIntegrityError(RuntimeError):
    """The unpacked bundle is not the one that was packaged; the message names the file."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shipped_files(root: str | os.PathLike) -> list[str]:
    """Every file under ``root`` as a sorted POSIX relative path, without the manifest and bytecode caches."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _IGNORED_DIRS)
        for name in files:
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if relative != CHECKSUMS_FILE:
                found.append(relative)
    return sorted(found)


def write_checksums(root: str | os.PathLike) -> Path:
    """``root/checksums.sha256``: one ``<sha256>  <path>`` line per shipped file."""
    root = Path(root)
    lines = [f"{file_sha256(root / path)}  {path}\n" for path in shipped_files(root)]
    target = root / CHECKSUMS_FILE
    target.write_text("".join(lines))
    return target


def read_checksums(root: str | os.PathLike) -> dict[str, str]:
    manifest = Path(root) / CHECKSUMS_FILE
    if not manifest.is_file():
        raise BundleIntegrityError(f"{manifest}: missing; a packaged bundle lists the sha256 of every file "
                                   "it ships there (unpack the archive again)")
    entries = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, path = line.partition("  ")
        if not sep or len(digest) != 64 or not path or Path(path).is_absolute() or ".." in Path(path).parts:
            raise BundleIntegrityError(f"{manifest}:{number}: expected '<sha256>  <relative path>', "
                                       f"found {line!r}")
        entries[path] = digest
    return entries


def verify_bundle(root: str | os.PathLike) -> int:
    """Check every listed file's sha256 and that the vendored package holds no unlisted file; return the
    number of files checked. Files a run adds elsewhere (outputs, logs, a user's overlay) are not checked."""
    root = Path(root).absolute()
    expected = read_checksums(root)
    for path, digest in expected.items():
        if not (root / path).is_file():
            raise BundleIntegrityError(f"{root / path}: listed in {CHECKSUMS_FILE} but missing")
        if file_sha256(root / path) != digest:
            raise BundleIntegrityError(f"{root / path}: sha256 differs from {CHECKSUMS_FILE}; the file was "
                                       "changed after packaging (refusing to load the bundle)")
    added = [p for p in shipped_files(root) if p.startswith(f"{VENDORED_PACKAGE}/") and p not in expected]
    if added:
        raise BundleIntegrityError(f"{root / added[0]}: not in {CHECKSUMS_FILE}; {len(added)} file(s) were "
                                   "added to the vendored package after packaging (refusing to import it)")
    return len(expected)


def verified_on_path(root: str | os.PathLike) -> None:
    """``verify_bundle(root)`` (on every config parse: a file changed since the last one is caught), then
    ``root`` first on ``sys.path``."""
    root = os.path.abspath(root)
    verify_bundle(root)
    if root not in sys.path:
        sys.path.insert(0, root)
