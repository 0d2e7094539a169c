"""Writing result and checkpoint files so that no reader ever finds half of one.

A process killed, a disk that fills up or a folder that turns read-only in the middle of a write would
otherwise leave a truncated file under the final name: a checkpoint that fails to load at resume, a
``metrics.json`` that parses to half a table. ``atomic_write`` writes a temporary file beside the target
(``.<name>.tmp``, same folder so the rename stays on one file system), flushes it to disk and renames it into
place; a failure removes the temporary file and raises an ``OSError`` that names the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike) -> Path:
    """Where ``atomic_write`` stages ``path``: a hidden sibling, so globbing ``*.pt`` never finds it."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object], what: str = "file",
                 durable: bool = True) -> Path:
    """Call ``write`` on a binary file that appears at ``path`` only once complete; return ``path``.

    With ``durable`` the data is ``fsync``-ed before the rename and the folder after it, so the new file also
    survives a power cut; without, a killed process still never leaves half a file, which is all that many
    small result files need (an ``fsync`` each would dominate their write time). Any ``OSError`` (``ENOSPC``,
    ``EACCES``, ``EROFS``, ...) is re-raised as the same ``OSError`` subclass naming ``path`` and ``what`` was
    written; the old file at ``path``, if any, is left as it was.
    """
    path = Path(path)
    partial = temp_path(path)
    try:
        try:
            with open(partial, "wb") as handle:
                write(handle)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if durable:
            _fsync_dir(path.parent)
    except OSError as e:
        if e.errno is None:
            raise
        reason = f"{os.strerror(e.errno)} while writing {what}; nothing was written under this name and " \
                 "an earlier file there is unchanged"
        raise OSError(e.errno, reason, os.fspath(path)) from e
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (a no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
