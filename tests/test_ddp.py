"""Multi-process training under torchrun (gloo on CPU): shared LoRA, whole-batch statistics, rank-0 files."""

import os
import subprocess
import sys

import torch


def test_two_ranks_stay_in_sync_and_only_rank0_writes(tmp_path):
    out = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's package, not an installed one
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            os.path.join(os.path.dirname(__file__), "ddp_worker.py"),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert r0["lora"].abs().sum() > 0
    torch.testing.assert_close(r0["lora"], r1["lora"], atol=0, rtol=0)  # all-reduced gradients
    assert r0["nfe"] == [2 * 2 * 6] * 2  # all ranks' trajectories: 4 × T(T+1)/2
    assert sorted(os.listdir(out)) == ["checkpoint", "checkpoint-000002", "lora.safetensors", "metrics.jsonl"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
