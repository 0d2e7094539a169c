"""eCLIP for chest X-rays as MONAI components.

Data flows one way: ``data`` (readers, datalists, phantom generator) → ``transforms`` (DICOM, gaze,
text) → ``networks`` (towers, heatmap processor, eCLIP) → ``engines`` (the trainer that injects expert
batches) → ``handlers`` / ``metrics``. Subpackages are imported lazily by the bundle configs, so importing
the package itself stays cheap.
"""

from eclip_monai.errors import CXRDataError

__version__ = "0.1.0"
__all__ = ["CXRDataError", "__version__"]
