"""SIGKILL at chosen points of a short training bundle run: the resumed run ends bitwise equal to the
uninterrupted one, and no half-written file ever sits under a checkpoint's name.

``scripts/fault_injection.py`` is the harness; here a fast slice of its cases (a checkpoint write, validation,
expert-batch loading) on 2-epoch runs shares one uninterrupted reference run. ``make test-all`` runs every
case on the harness's 3-epoch runs, the 2-process ``torchrun`` cases (rank 1 killed) among them.
"""

from __future__ import annotations

import importlib.util
import sys
import time
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


TORCHRUN_FAILED = """\
W1203 16:34:58.278000 1556 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 1561 closing \
signal SIGTERM
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
monai.bundle FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-03_16:34:58
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 1561)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 1561
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-03_16:34:58
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1562)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 1562
======================================================
"""


def test_the_harness_reads_which_rank_torchrun_saw_fail_first_and_when_it_stopped_the_others():
    assert fi.failure_summary(TORCHRUN_FAILED) == ((1, -9), {0: -15, 1: -9})
    assert fi.failure_summary("Failures:\n  <NO_OTHER_FAILURES>\n") == (None, {})
    assert fi.failure_summary("no summary") == (None, {})
    sent = fi.sigterm_sent_at(TORCHRUN_FAILED)
    assert time.strftime("%m%d %H:%M:%S", time.localtime(sent)) == "1203 16:34:58"
    assert round(sent % 1, 3) == 0.278
    command = fi.torchrun_command(Path("runs"), Path("phantom"), 3, Path("ckpt.pt"))
    assert command[1:11] == ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                             "--nproc_per_node", "2", "-m", "monai.bundle", "run"]
    assert command[-2:] == ["--resume_from", "ckpt.pt"]
    assert all(fi.CASES[name].rank == 1 for name in fi.DDP) and len(fi.DDP) >= 3


@pytest.mark.slow
def test_every_kill_point_resumes_to_the_uninterrupted_result(tmp_path):
    harness = fi.Harness(tmp_path, epochs=fi.EPOCHS)
    harness.prepare()
    assert len(fi.SINGLE) >= 20
    for name in fi.SINGLE:
        check(harness.run_case(fi.CASES[name]))


@pytest.fixture(scope="module")
def ddp_harness(tmp_path_factory):
    harness = fi.Harness(tmp_path_factory.mktemp("fault_injection_ddp"), epochs=fi.EPOCHS)
    harness.prepare(single=False)
    harness.prepare_ddp()  # the uninterrupted 2-process run
    return harness


@pytest.mark.slow
@pytest.mark.parametrize("name", fi.DDP)
def test_a_killed_ddp_rank_stops_torchrun_and_the_same_command_resumes_to_the_uninterrupted_result(
        ddp_harness, name):
    """torchrun (2 processes, gloo) with rank 1 SIGKILLed after the first checkpoint: torchrun names rank 1
    as its first failure, stops rank 0 and exits non-zero within DETECTION_LIMIT_S; no file under a
    checkpoint name is torn; the same command plus --resume_from ends bitwise equal to the uninterrupted
    2-process run."""
    result = ddp_harness.run_case(fi.CASES[name])
    assert not result.not_stopped, f"{name}: {result.not_stopped}"
    assert len(result.detection_s) == 1 and result.detection_s[0] <= fi.DETECTION_LIMIT_S, result.killed
    assert "checkpoint_epoch=1.pt" in result.left_after_kill, result.left_after_kill  # killed after it
    check(result)
