"""DDP the way users launch it: two ``torchrun`` nodes (one gloo process each, CPU, c10d rendezvous on
127.0.0.1) train the bundle from shards, with expert batches, and end with the weights of one process on the
same global batch. The gathered InfoNCE and its gradients alone are checked by ``test_losses.py``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN, MULTI_GPU, SHARDS = (ROOT / p for p in (
    "bundle/configs/train.json", "bundle/configs/multi_gpu_train.json", "configs/shards.json"))
# plain SGD: the weights then differ only by float summation order (Adam would amplify that noise in
# near-zero gradients to a full step); mixup off: its Beta draw is seeded per rank
SGD = {"optimizer": {"_target_": "torch.optim.SGD", "lr": "@learning_rate",
                     "params": "$@network_def.param_groups(@learning_rate, @weight_decay)"}}
STEPS = ["--model_name", "eclip-tiny", "--image_size", "64", "--num_workers", "0", "--max_epochs", "1",
         "--val_interval", "5", "--mixup", "False", "--learning_rate", "0.1", "--curriculum#mode", "always"]


def test_two_torchrun_nodes_on_shards_match_one_process_on_the_same_global_batch(tmp_path):
    from label_server import free_port
    from test_stream import write_phantom_shards

    shards = write_phantom_shards(tmp_path, size=74)  # 36 training images: 4 steps of a global batch of 8
    (tmp_path / "sgd.json").write_text(json.dumps(SGD))
    bundle = [sys.executable, "-m", "monai.bundle", "run", *STEPS, "--shards_dir", str(shards)]
    one = [*bundle, "--config_file", str([str(TRAIN), str(SHARDS), str(tmp_path / "sgd.json")]),
           "--batch_size", "8", "--runs_dir", str(tmp_path / "one")]
    port, configs = free_port(), str([str(TRAIN), str(MULTI_GPU), str(SHARDS), str(tmp_path / "sgd.json")])
    nodes = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "shards",
              "--rdzv_conf", f"is_host={int(node == 0)}", "--local_addr", "127.0.0.1",
              "--node_rank", str(node), *bundle[1:], "--config_file", configs, "--batch_size", "4",
              "--runs_dir", str(tmp_path / "two")]
             for node in (0, 1)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for cmd in (one, *nodes)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], "\n".join(out[-3000:] for out in outputs)

    alone, nodes = (torch.load(tmp_path / run / "eclip" / "checkpoints" / "final.pt", weights_only=False)
                    for run in ("one", "two"))
    assert alone["trainer"]["iteration"] == nodes["trainer"]["iteration"] == 4
    assert alone["expert_stream"] == nodes["expert_stream"] and alone["expert_stream"]["consumed"] == 4
    assert alone["data_order"] == nodes["data_order"]  # the same global order: seed, batch 8, shards
    for key, value in alone["network"].items():
        torch.testing.assert_close(nodes["network"][key], value, rtol=1e-4, atol=1e-6, msg=key)
