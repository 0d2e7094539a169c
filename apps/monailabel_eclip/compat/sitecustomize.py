"""Site hook for the MONAI Label server: recreates ``pydicom._storage_sopclass_uids`` for pydicom 3.

MONAI Label 0.8.5 imports ``pydicom_seg`` when its infer endpoint loads, and ``pydicom_seg`` 0.4.1 imports
``SegmentationStorage`` from ``pydicom._storage_sopclass_uids``, a private module pydicom 3 removed (the UIDs
now live in ``pydicom.uid``). The project pins pydicom 3, so instead of downgrading it this hook serves that
module name from ``pydicom.uid``. It is active only in processes started with this folder on ``PYTHONPATH``
(the label server), only for that one module name, and only when pydicom itself lacks it. See
docs/monailabel.md.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

LEGACY_MODULE = "pydicom._storage_sopclass_uids"


class StorageSOPClassUIDs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder + loader of ``LEGACY_MODULE``; appended last, so a pydicom that still ships it wins."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == LEGACY_MODULE else None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        import pydicom.uid

        for name in dir(pydicom.uid):  # every named UID: a superset of the old module's storage classes
            value = getattr(pydicom.uid, name)
            if isinstance(value, pydicom.uid.UID):
                setattr(module, name, value)


def install() -> None:
    if not any(isinstance(finder, StorageSOPClassUIDs) for finder in sys.meta_path):
        sys.meta_path.append(StorageSOPClassUIDs())


def _run_shadowed_sitecustomize() -> None:
    """Putting this folder on PYTHONPATH hides any other ``sitecustomize``; run that one too."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


install()
_run_shadowed_sitecustomize()
