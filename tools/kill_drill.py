"""kill -9 drill (docs/robustness.md): train the toy model, kill the process with SIGKILL at a random point, continue
the run (`--resume out_dir`, or `--overwrite` when it died before its first checkpoint), and check that the
finished run equals an uninterrupted one: every metric except timings and memory, and the LoRA bit for bit.

    python tools/kill_drill.py --runs 20 --seed 0 --out /tmp/kill_drill

The kill time is uniform over the training part of a run (from the moment the run holds its out_dir lock to the
end of an uninterrupted run), drawn from random.Random(seed + i) for run i. Writes drill.json in --out; exit
code 0 when every run ended equal to the uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = """steps = 3
prompts_per_iteration = 2
group_size = 2
train_batch = 2
lora_rank = 2
lora_alpha = 4
eval_every = 2
eval_seeds = [0]
eval_steps = 3
save_every = 1
lr = 1e-2
"""


def _env() -> dict:
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _train(config: str, *args) -> list[str]:
    return [sys.executable, "-m", "densegrpo_core", "train", "--config", config, "--no-progress", *map(str, args)]


def comparable(path: str) -> list[dict]:
    """metrics.jsonl without timings and memory figures."""
    with open(path) as f:
        lines = [json.loads(x) for x in f]
    return [{k: v for k, v in m.items() if not k.endswith("_s") and "_bytes" not in k} for m in lines]


def lora_tensors(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def same_lora(a: str, b: str) -> bool:
    ta, tb = lora_tensors(a), lora_tensors(b)
    return ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)


def _wait_lock(out: str, p: subprocess.Popen, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while not os.path.exists(os.path.join(out, ".densegrpo.lock")):
        if p.poll() is not None or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the run into {out} did not start (exit code {p.returncode})")
        time.sleep(0.01)
    return time.monotonic()


def drill(out_root: str, runs: int = 20, seed: int = 0, iterations: int = 12, log=None) -> dict:
    """Run the drill; → {"baseline_train_s", "runs": [...], "all_equal"}."""
    from densegrpo_core.training.checkpoint import resolve_checkpoint

    log = log or (lambda *a: print(*a, flush=True))
    os.makedirs(out_root, exist_ok=True)
    config = os.path.join(out_root, "toy.toml")
    with open(config, "w") as f:
        f.write(TOY)
    full = os.path.join(out_root, "full")
    p = subprocess.Popen(_train(config, "--out", full, "--iterations", iterations, "--overwrite"), env=_env())
    started = _wait_lock(full, p)
    if p.wait(timeout=600) != 0:
        raise RuntimeError("the uninterrupted run failed")
    train_s = time.monotonic() - started
    expected = comparable(os.path.join(full, "metrics.jsonl"))
    log(f"uninterrupted: {iterations} iterations, {train_s:.1f} s of training")
    results = []
    for i in range(runs):
        delay = random.Random(seed + i).uniform(0, train_s)
        out = os.path.join(out_root, f"run{i:02d}")
        p = subprocess.Popen(
            _train(config, "--out", out, "--iterations", iterations, "--overwrite"),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_lock(out, p)
        time.sleep(delay)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
        metrics_path = os.path.join(out, "metrics.jsonl")
        lines_at_kill = sum(1 for _ in open(metrics_path)) if os.path.exists(metrics_path) else 0
        leftovers = sorted(n for n in os.listdir(out) if n.startswith(".checkpoint"))
        try:
            found = resolve_checkpoint(out)
            import torch

            at = int(torch.load(os.path.join(found, "state.pt"), weights_only=True)["iteration"])
            cont = _train(config, "--resume", out, "--iterations", iterations)
        except FileNotFoundError:
            found, at = None, None
            cont = _train(config, "--out", out, "--iterations", iterations, "--overwrite")
        r = subprocess.run(cont, env=_env(), capture_output=True, text=True, timeout=600)
        equal = (
            r.returncode == 0
            and comparable(metrics_path) == expected
            and same_lora(os.path.join(out, "lora.safetensors"), os.path.join(full, "lora.safetensors"))
        )
        res = {
            "run": i,
            "kill_after_s": round(delay, 3),
            "killed": killed,
            "metrics_lines_at_kill": lines_at_kill,
            "leftovers_at_kill": leftovers,
            "resumed_from_iteration": at,
            "continued_with": "--resume" if found else "--overwrite (no checkpoint yet)",
            "exit_code": r.returncode,
            "equal": equal,
        }
        results.append(res)
        log(
            f"run {i:2d}: kill after {delay:5.2f} s ({'killed' if killed else 'had finished'}), "
            f"{lines_at_kill} lines, leftovers {leftovers or '-'}, continued from "
            f"{'iteration %d' % at if at is not None else 'scratch'}: {'equal' if equal else 'DIFFERENT'}"
        )
        if not equal and r.returncode != 0:
            log(r.stderr[-2000:])
    summary = {"baseline_train_s": round(train_s, 2), "iterations": iterations, "seed": seed, "runs": results}
    summary["all_equal"] = all(r["equal"] for r in results)
    with open(os.path.join(out_root, "drill.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="kill_drill_out", help="working folder (drill.json goes here)")
    ap.add_argument("--runs", type=int, default=20, help="killed runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--iterations", type=int, default=12, help="iterations per run (a checkpoint after each)")
    args = ap.parse_args()
    summary = drill(args.out, args.runs, args.seed, args.iterations)
    n = sum(r["equal"] for r in summary["runs"])
    print(f"{n}/{len(summary['runs'])} runs ended equal to the uninterrupted run; wrote {args.out}/drill.json")
    return 0 if summary["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
