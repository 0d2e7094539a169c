"""A 2-process ``torchrun`` (gloo, CPU) eCLIP step matches the 1-process step on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "distributed" / "ddp_train_step.py"


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_torchrun_two_processes_match_one_process_loss_and_gradients(tmp_path):
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    _run([sys.executable, str(SCRIPT), "--out", str(single)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
          "--out", str(ddp)], tmp_path)
    one, two = torch.load(single), torch.load(ddp)
    assert (one["world"], two["world"]) == (1, 2)
    assert one["n_expert"] == 4 and two["n_expert"] == 2  # expert batch concatenated on every rank
    assert abs(one["loss"] - two["loss"]) < 1e-5
    changed = [k for k, d in one["delta"].items() if d.abs().max() > 0]
    assert any("heatmap_processor" in k for k in changed) and any("visual" in k for k in changed)
    for key, delta in one["delta"].items():
        torch.testing.assert_close(two["delta"][key], delta, rtol=1e-4, atol=1e-6, msg=key)
