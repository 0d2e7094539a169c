"""A phantom chest X-ray world in the real public formats (MIMIC-CXR, EGD-CXR, REFLACX, evaluation sets).

So that every reader, transform and training run works on a fresh machine without credentialed data, this
package draws chest X-ray phantoms with known findings, writes them as real DICOMs with MIMIC-style reports
and labels, and records radiologist-like gaze on them. ``python scripts/make_phantom_data.py --out DIR``;
``--full-size`` writes MIMIC-sized 12-bit films (optionally RLE- or JPEG 2000-compressed) for data-path
benchmarks (:mod:`.full_size` says what about them is realistic).
"""

from eclip_monai.data.phantom.generate import ensure_phantom, generate_phantom
from eclip_monai.data.phantom.study import PhantomStudy, render_frontal, simulate_study

__all__ = ["PhantomStudy", "ensure_phantom", "generate_phantom", "render_frontal", "simulate_study"]
