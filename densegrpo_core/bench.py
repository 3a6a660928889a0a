"""Cost benchmark: NFE per trajectory (fused vs naive, MATH.md §9) and wall time per iteration per mode.

Writes `bench.json` and a Markdown table `bench.md`. Figures are measured, never predicted, except the
column that says "predicted" (from NFE counts).
"""
from __future__ import annotations

import json
import os
import platform
import time

import torch

from .advantages import ADVANTAGE_MODES


def _timed(fn, repeats: int):
    fn()                                            # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - t0) / repeats


def run_bench(out: str, steps: int = 10, group_size: int = 8, prompts: int = 4, iterations: int = 3,
              device: str = "cpu") -> dict:
    from .pipeline import load_pipeline
    from .rewards import get_reward
    from .rollout import fused_rollout, naive_rollout, nfe_per_trajectory
    from .schedule import sde_noise_scales, shifted_flow_grid
    from .trainer import TrainConfig, Trainer

    os.makedirs(out, exist_ok=True)
    reward = get_reward("toy")
    pipe, train_prompts, _ = load_pipeline("toy", device)
    tau = shifted_flow_grid(steps, pipe.default_shift)
    sigmas = sde_noise_scales(torch.full((steps,), 0.7), tau)
    batch = [train_prompts[i % len(train_prompts)] for i in range(prompts) for _ in range(group_size)]
    x_T = torch.randn((len(batch), *pipe.latent_shape), generator=torch.Generator().manual_seed(0)).to(device)

    rollouts = {}
    for name, fn in (("fused", fused_rollout), ("naive", naive_rollout)):
        ro, sec = _timed(lambda: fn(pipe.guide(batch, pipe.default_cfg, device=device), x_T, tau, sigmas,
                                    torch.Generator().manual_seed(1)), iterations)
        rollouts[name] = {"nfe_per_trajectory": ro.nfe_per_trajectory, "forward_calls": ro.forward_calls,
                          "predicted_nfe": nfe_per_trajectory(steps, fused=name == "fused"), "seconds": sec}

    modes = {}
    for mode in ADVANTAGE_MODES:
        pipe, _, _ = load_pipeline("toy", device)
        cfg = TrainConfig(out_dir=os.path.join(out, "runs", mode), device=device, advantage_mode=mode, steps=steps,
                          group_size=group_size, prompts_per_iteration=prompts, iterations=iterations + 1,
                          save_every=0, eval_every=0)
        trainer = Trainer(cfg, pipe, reward, train_prompts)
        trainer.iteration()                          # warm-up
        ms = [trainer.iteration() for _ in range(iterations)]
        modes[mode] = {k: sum(m[k] for m in ms) / len(ms) for k in ("iteration_s", "rollout_s", "reward_s",
                                                                    "update_s", "nfe_per_trajectory")}
    dense, flow = modes["dense_grpo"], modes["flow_grpo"]
    result = {
        "format": "densegrpo.bench/1", "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "steps": steps, "group_size": group_size, "prompts": prompts,
        "rollout": rollouts, "modes": modes,
        "ratio_dense_over_flow": {
            "rollout_time_measured": dense["rollout_s"] / flow["rollout_s"],
            "rollout_nfe_predicted": dense["nfe_per_trajectory"] / flow["nfe_per_trajectory"],
            "iteration_time_measured": dense["iteration_s"] / flow["iteration_s"]},
        "fused_speedup_over_naive": rollouts["naive"]["seconds"] / rollouts["fused"]["seconds"],
    }
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"Toy model, T = {steps}, {prompts} prompts × G = {group_size}, device {result['device_name']}", "",
             "| rollout | NFE / trajectory (measured) | predicted | forward calls | seconds |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['nfe_per_trajectory']:.0f} | {v['predicted_nfe']} | {v['forward_calls']} | {v['seconds']:.3f} |"
              for k, v in rollouts.items()]
    lines += ["", "| mode | s / iteration | rollout s | decode+reward s | update s | NFE / trajectory |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['iteration_s']:.3f} | {v['rollout_s']:.3f} | {v['reward_s']:.3f} | {v['update_s']:.3f} | "
              f"{v['nfe_per_trajectory']:.0f} |" for k, v in modes.items()]
    r = result["ratio_dense_over_flow"]
    lines += ["", f"DenseGRPO / Flow-GRPO: rollout time {r['rollout_time_measured']:.2f}× "
                  f"(NFE predicts {r['rollout_nfe_predicted']:.2f}×), whole iteration {r['iteration_time_measured']:.2f}×; "
                  f"fused sweep {result['fused_speedup_over_naive']:.2f}× faster than the naive path."]
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result
