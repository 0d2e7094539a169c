"""One exception type for bad input, so callers (and the trainer's skip-and-count logic) catch one thing."""

from __future__ import annotations

import os


class CXRDataError(ValueError):
    """Bad input data: the message names the file, the field, what was expected and what was found.

    Subclasses ``ValueError`` so generic code that already guards against bad values keeps working.

    Args:
        reason: what is wrong, phrased so the user can act on it ("expected X, found Y").
        path: the file (or directory) that holds the bad data.
        field: the DICOM keyword, CSV column or dictionary key at fault.
    """

    def __init__(self, reason: str, *, path: str | os.PathLike | None = None, field: str | None = None):
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        self.field = field
        where = ": ".join(str(p) for p in (self.path, field) if p)
        super().__init__(f"{where}: {reason}" if where else reason)

    def __reduce__(self):  # keep the keyword-only arguments across DataLoader worker pickling
        return (_rebuild, (self.reason, self.path, self.field))


def _rebuild(reason, path, field):
    return CXRDataError(reason, path=path, field=field)


def require_switches(**switches: object) -> None:
    """Refuse a config switch that is not ``True``/``False``, naming it. ``monai.bundle run --key false`` hands
    the config the *string* ``'false'`` (only ``False`` is read as a bool), which is truthy: without this,
    ``--generate_phantom false`` would still generate the phantom world. A configuration error, so a
    ``TypeError``, not ``CXRDataError``."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected True or False, found {value!r} (on the command line write "
                            f"--{name} False or --{name} True: lower-case false/true arrive as text)")
