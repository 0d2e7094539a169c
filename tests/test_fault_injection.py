"""SIGKILL at chosen points of a short training bundle run: the resumed run ends bitwise equal to the
uninterrupted one, and no half-written file ever sits under a checkpoint's name.

``scripts/fault_injection.py`` is the harness; here a fast slice of its cases (a checkpoint write, validation,
expert-batch loading) on 2-epoch runs shares one uninterrupted reference run. ``make test-all`` runs every
case on the harness's 3-epoch runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _harness_module():
    name = "fault_injection"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "fault_injection.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


fi = _harness_module()


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    harness = fi.Harness(tmp_path_factory.mktemp("fault_injection"), epochs=fi.FAST_EPOCHS)
    harness.prepare()
    return harness


def check(result) -> None:
    case = result.case
    assert len(result.killed) == len(case.kills) and all("SIGKILL" in k for k in result.killed), result.killed
    assert not result.torn, f"{case.name}: a file under a checkpoint name does not load: {result.torn}"
    assert result.difference is None, f"{case.name}: the resumed run differs at {result.difference}"
    assert not result.temporary, f"{case.name}: temporary files left: {result.temporary}"
    assert result.passed


@pytest.mark.parametrize("name", fi.FAST)
def test_a_run_killed_at_the_point_resumes_to_the_uninterrupted_result(harness, name):
    result = harness.run_case(fi.CASES[name])
    check(result)
    if name.startswith("ckpt-write"):  # the kill left half a temporary file, never a checkpoint name
        assert any(n.startswith(".checkpoint_epoch=") for n in result.left_after_kill)


def test_the_harness_notices_a_resume_that_differs_by_one_ulp(harness):
    reference = harness.reference["final.pt"]
    changed = {**reference, "network": dict(reference["network"])}
    name, value = next(iter(changed["network"].items()))
    changed["network"][name] = torch.nextafter(value, torch.full_like(value, float("inf")))  # one ulp up
    assert fi.first_difference(reference, changed) == f"/network/{name}"
    assert fi.first_difference(reference, reference) is None


@pytest.mark.slow
def test_every_kill_point_resumes_to_the_uninterrupted_result(tmp_path):
    harness = fi.Harness(tmp_path, epochs=fi.EPOCHS)
    harness.prepare()
    assert len(fi.CASES) >= 20
    for case in fi.CASES.values():
        check(harness.run_case(case))
