"""The project's main job: DenseGRPO vs Flow-GRPO on the shipped toy model, end to end.

calibrate ψ (Algorithm 1) → train `dense_grpo` (calibrated ψ), `dense_grpo_uniform` (the ablation: dense
advantage at Flow-GRPO's uniform ψ = 0.7) and `flow_grpo` (uniform ψ = 0.7, its own setting) from the same
seeds and iteration budget, all on the SD3 scheduler grid → evaluate with the plain ODE sampler on held-out
prompts → summary.json, reward_curves.png, dense_rewards.png, psi.json, psi.png, lora_dense_grpo.safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import torch

from ..method.schedule import FLOW_GRPO_NOISE_LEVEL

SUMMARY_FORMAT = "densegrpo.summary/1"
# method → (advantage mode, ψ): "calibrated" is Algorithm 1's result, a number is Flow-GRPO's uniform ψ
METHODS = {
    "dense_grpo": ("dense_grpo", "calibrated"),
    "dense_grpo_uniform": ("dense_grpo", FLOW_GRPO_NOISE_LEVEL),
    "flow_grpo": ("flow_grpo", FLOW_GRPO_NOISE_LEVEL),
}


@dataclass
class DemoBudget:
    calib_iterations: int  # Algorithm 1 iterations
    calib_prompts: int  # prompts per calibration iteration
    calib_group: int  # samples per prompt in calibration (N = prompts × group)
    iterations: int  # GRPO iterations per method and seed
    prompts_per_iteration: int  # prompts per GRPO iteration
    group_size: int  # G
    eval_every: int  # evaluation period (iterations)
    eval_seeds: tuple  # noise seeds per held-out prompt


QUICK = DemoBudget(
    calib_iterations=6,
    calib_prompts=4,
    calib_group=6,
    iterations=16,
    prompts_per_iteration=2,
    group_size=8,
    eval_every=4,
    eval_seeds=tuple(range(8)),
)
FULL = DemoBudget(
    calib_iterations=20,
    calib_prompts=4,
    calib_group=8,
    iterations=60,
    prompts_per_iteration=4,
    group_size=8,
    eval_every=5,
    eval_seeds=tuple(range(8)),
)
# Algorithm 1 with the relative balance test: with N = 24-32 samples the literal |pos - neg| < 2 almost
# never holds, so the literal rule only ever lowers ψ (docs/method.md §8); 10% of N is the balance tolerance.
CALIBRATION = dict(criterion="relative", delta=0.1)

# Trainer settings shared by both methods; everything else is the paper default (TrainConfig).
TOY_TRAIN = dict(
    steps=10,
    lr=3e-4,
    lora_rank=32,
    lora_alpha=64,
    beta=0.01,
    clip_range=1e-4,
    train_batch=8,
    eval_steps=10,
    save_every=0,
)


def iterations_to_reach(iterations: list[int], curve: list[float], target: float, start: float) -> int | None:
    """First iteration at which `curve` reaches `target`, or None: never reached, or `target` is not above the
    `start` reward (the pretrained model already has it, so "iterations to reach it" measures nothing)."""
    if not target > start:
        return None
    for it, r in zip(iterations, curve):
        if r >= target:
            return it
    return None


def source_commit() -> str | None:
    """The git commit of the code that ran (with "-dirty" for uncommitted changes), None outside a checkout."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def method_psi(method: str, calibrated: list[float]) -> list[float]:
    """The ψ a demo method trains with: the calibrated one, or its uniform value at every step."""
    psi = METHODS[method][1]
    return list(calibrated) if psi == "calibrated" else [float(psi)] * len(calibrated)


def train_run(
    method: str,
    seed: int,
    psi: list[float],
    budget: DemoBudget,
    settings: dict,
    device: str,
    out: str,
    threads: int | None = None,
) -> dict:
    """Train one (method, seed) run from a fresh base model with the trainer `settings` (TOY_TRAIN); a
    process-pool worker (everything it needs comes in its arguments) when `--workers` > 1."""
    from ..models.pipeline import load_pipeline
    from ..rewards import get_reward
    from ..training.trainer import TrainConfig, Trainer

    if threads:
        torch.set_num_threads(threads)
    run_dir = os.path.join(out, "runs", f"{method}_seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(
        out_dir=run_dir,
        seed=seed,
        device=device,
        advantage_mode=METHODS[method][0],
        psi=psi,
        iterations=budget.iterations,
        prompts_per_iteration=budget.prompts_per_iteration,
        group_size=budget.group_size,
        eval_every=budget.eval_every,
        eval_seeds=budget.eval_seeds,
        **settings,
    )
    pipe, train_prompts, eval_prompts = load_pipeline("toy", device)
    trainer = Trainer(config, pipe, get_reward("toy"), train_prompts, eval_prompts)
    print(f"[demo] training {method} seed {seed}", flush=True)
    res = trainer.run(progress=threads is None)
    print(
        f"[demo] {method} seed {seed}: eval {res.evals[0]['reward_mean']:.4f} → "
        f"{res.evals[-1]['reward_mean']:.4f} in {res.wall_s:.0f}s",
        flush=True,
    )
    return {
        "method": method,
        "seed": seed,
        "evals": res.evals,
        "metrics": res.metrics,
        "wall_s": res.wall_s,
        "lora": res.lora_path,
        "last_rewards": trainer.last_rewards,
    }


def run_demo(out: str, quick: bool = False, device: str = "cpu", seeds=None, workers: int | None = 1) -> dict:
    from ..method.calibrate import CalibrationConfig, calibrate
    from ..method.rollout import predicted_nfe
    from ..method.schedule import Psi, flow_grid
    from ..models.pipeline import dense_reward_sampler, evaluate_ode, fused_rollout_rewards, load_pipeline
    from ..rewards import get_reward
    from ..util.plots import plot_dense_rewards, plot_psi_history, plot_reward_curves

    commit = source_commit()  # read now: the checkout may move on while the demo runs
    budget = QUICK if quick else FULL
    seeds = list(seeds) if seeds else ([0] if quick else [0, 1, 2])
    if workers is None:  # one process per CPU core on the CPU, up to one per run; one on CUDA
        workers = 1 if device != "cpu" else max(1, min(os.cpu_count() or 1, len(METHODS) * len(seeds)))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    os.makedirs(out, exist_ok=True)
    reward = get_reward("toy")
    t_start = time.perf_counter()

    # 1. calibrate ψ on the pretrained model
    pipe, train_prompts, eval_prompts = load_pipeline("toy", device)
    tau = flow_grid(TOY_TRAIN["steps"], pipe.default_shift)
    print(
        f"[demo] calibrating psi ({budget.calib_iterations} iterations, "
        f"N = {budget.calib_prompts * budget.calib_group})",
        flush=True,
    )
    sampler = dense_reward_sampler(
        fused_rollout_rewards(pipe, reward, tau, cfg_scale=pipe.default_cfg, device=device),
        train_prompts,
        prompts_per_iteration=budget.calib_prompts,
        group_size=budget.calib_group,
        seed=1234,
    )
    cal = calibrate(
        sampler,
        Psi.uniform(FLOW_GRPO_NOISE_LEVEL, TOY_TRAIN["steps"], tau=tau.tolist()),
        CalibrationConfig(
            iterations=budget.calib_iterations, average_last=min(5, budget.calib_iterations), **CALIBRATION
        ),
    )
    psi = cal.psi
    psi.meta.update({"reward": "toy", "model": "toy", "history": cal.history})
    psi.save(os.path.join(out, "psi.json"))
    plot_psi_history(cal.history, os.path.join(out, "psi.png"))
    print(f"[demo] psi = {[round(v, 3) for v in psi.values]}", flush=True)

    # 2. the pretrained model's held-out reward
    base = evaluate_ode(
        pipe,
        reward,
        eval_prompts,
        seeds=budget.eval_seeds,
        tau=flow_grid(TOY_TRAIN["eval_steps"], pipe.default_shift),
        device=device,
    )
    print(f"[demo] pretrained eval reward {base['reward_mean']:.4f}", flush=True)

    # 3. train every method from the same seeds and budget, in `workers` processes
    jobs = [(m, seed) for seed in seeds for m in METHODS]
    if workers == 1:
        done = [train_run(m, seed, method_psi(m, psi.values), budget, TOY_TRAIN, device, out) for m, seed in jobs]
    else:
        import concurrent.futures
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // workers)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            done = list(
                ex.map(
                    train_run,
                    *zip(
                        *[
                            (m, seed, method_psi(m, psi.values), budget, TOY_TRAIN, device, out, threads)
                            for m, seed in jobs
                        ]
                    ),
                )
            )
    runs = {m: [r for r in done if r["method"] == m] for m in METHODS}

    # 4. summary, plots, LoRA
    summary = {
        "format": SUMMARY_FORMAT,
        "task": "toy: coloured shapes on backgrounds (16x16), toy reward",
        "device": device,
        "seeds": seeds,
        "quick": quick,
        "pretrained_eval_reward": base["reward_mean"],
        "eval_prompts": len(eval_prompts),
        "eval_seeds": list(budget.eval_seeds),
        "methods": {},
        "commit": commit,
        "psi": psi.values,
        "grid": "sd3",
        "tau": tau.tolist(),
        "workers": workers,
        "nfe_per_trajectory": {
            "fused": predicted_nfe(TOY_TRAIN["steps"], fused=True),
            "naive": predicted_nfe(TOY_TRAIN["steps"], fused=False),
        },
    }
    curves = {}
    for method, rs in runs.items():
        iters = [e["iteration"] for e in rs[0]["evals"]]
        per_seed = [[e["reward_mean"] for e in r["evals"]] for r in rs]
        mean_curve = torch.tensor(per_seed).mean(0).tolist()
        curves[method] = {"iterations": iters, "reward_mean": per_seed}
        summary["methods"][method] = {
            "iterations": iters,
            "reward_mean": mean_curve,
            "reward_mean_per_seed": per_seed,
            "eval_reward": mean_curve[-1],
            "eval_reward_per_seed": [c[-1] for c in per_seed],
            "train_reward_mean": torch.tensor([[m["reward_mean"] for m in r["metrics"]] for r in rs]).mean(0).tolist(),
            "wall_s": sum(r["wall_s"] for r in rs) / len(rs),
            "nfe_per_trajectory": rs[0]["metrics"][0]["nfe_per_trajectory"],
            "advantage_mode": METHODS[method][0],
            "psi": method_psi(method, psi.values),
        }
    target = summary["methods"]["flow_grpo"]["eval_reward"]
    pretrained = base["reward_mean"]
    reach = {
        m: iterations_to_reach(s["iterations"], s["reward_mean"], target, pretrained)
        for m, s in summary["methods"].items()
    }
    summary["flow_grpo_improved"] = target > pretrained  # else no method's "iterations to reach" is defined
    summary["iterations_to_reach_flow_grpo_final"] = reach
    summary["wall_s"] = time.perf_counter() - t_start
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_reward_curves(
        curves,
        os.path.join(out, "reward_curves.png"),
        title=f"Toy task: held-out ODE reward ({len(seeds)} seed{'s' * (len(seeds) > 1)})",
        reference={"pretrained": base["reward_mean"]},
    )
    dense0 = runs["dense_grpo"][0]
    plot_dense_rewards(
        dense0["last_rewards"][: budget.group_size],
        os.path.join(out, "dense_rewards.png"),
        title="DenseGRPO: R_t and ΔR_t of one prompt group (last iteration)",
        tau=tau.tolist(),
    )
    shutil.copyfile(dense0["lora"], os.path.join(out, "lora_dense_grpo.safetensors"))

    print(
        f"\n{'method':18s} {'eval reward':>12s} {'per seed':>28s} {'s/run':>7s} {'NFE/traj':>9s} "
        f"{'iters to FG final':>18s}"
    )
    for m, s in summary["methods"].items():
        ps = " ".join(f"{v:.3f}" for v in s["eval_reward_per_seed"])
        print(
            f"{m:18s} {s['eval_reward']:12.4f} {ps:>28s} {s['wall_s']:7.0f} {s['nfe_per_trajectory']:9.0f} "
            f"{'—' if reach[m] is None else str(reach[m]):>18s}"
        )
    if not summary["flow_grpo_improved"]:
        print(
            f"(Flow-GRPO ended at {target:.4f}, not above the pretrained {pretrained:.4f}: no iterations to reach it)"
        )
    print(f"{'pretrained':18s} {base['reward_mean']:12.4f}\nwrote {out}/summary.json (total {summary['wall_s']:.0f}s)")
    return summary
