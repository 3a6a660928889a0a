"""The time-to-reward benchmark: held-out reward per wall-clock second and per NFE, on the toy task.

Every method trains from the same seeds for the same budget of *training* wall-clock seconds (rollout +
reward + update; the evaluations are not on the clock), one run at a time or `workers` runs at once, every run
with the same thread count (so each method meets the same load), and is
evaluated with the plain ODE sampler on the held-out prompts each time its training clock crosses a multiple
of `eval_every_s`. Outputs time_to_reward.json, time_to_reward.md and time_to_reward.png (docs/results.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass

import torch

from .demo import TOY_TRAIN, source_commit

FORMAT = "densegrpo.time_to_reward/1"
WINDOW = 2  # W of the windowed methods: T = 10, W = 2 (docs/method.md §10)
# method → TrainConfig settings on top of TOY_TRAIN; flow_grpo is the reference whose final reward is a target
METHODS = {
    "flow_grpo": dict(advantage_mode="flow_grpo"),
    "flow_grpo_window": dict(advantage_mode="flow_grpo", sde_window=WINDOW),  # Flow-GRPO-Fast
    "dense_grpo": dict(advantage_mode="dense_grpo"),
    "dense_grpo_window": dict(advantage_mode="dense_grpo", sde_window=WINDOW),
    "dense_grpo_ode1": dict(advantage_mode="dense_grpo", ode_steps=1),
    "dense_grpo_ode2": dict(advantage_mode="dense_grpo", ode_steps=2),
}
TARGET_GAINS = (0.01, 0.02, 0.03)  # targets: pretrained reward + these, and Flow-GRPO's final reward


@dataclass
class Budget:
    train_s: float  # training wall-clock seconds per run
    eval_every_s: float  # evaluate each time the training clock crosses a multiple of this
    prompts_per_iteration: int
    group_size: int
    eval_seeds: tuple  # noise seeds per held-out prompt


QUICK = Budget(train_s=30.0, eval_every_s=10.0, prompts_per_iteration=2, group_size=8, eval_seeds=(0, 1))
FULL = Budget(train_s=900.0, eval_every_s=60.0, prompts_per_iteration=4, group_size=8, eval_seeds=tuple(range(8)))


def time_to_target(points: list[dict], target: float, key: str = "seconds") -> float | None:
    """`key` (training seconds or NFE) of the first evaluation whose reward reaches `target`; None if none does."""
    for p in points:
        if p["reward"] >= target:
            return p[key]
    return None


def train_for(method: str, seed: int, budget: Budget, out: str, settings: dict | None = None) -> dict:
    """Train one (method, seed) run for `budget.train_s` training seconds; its evaluation points and costs."""
    from ..models.pipeline import load_pipeline
    from ..rewards import get_reward
    from ..training.trainer import TrainConfig, Trainer

    run_dir = os.path.join(out, "runs", f"{method}_seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    config = TrainConfig(
        out_dir=run_dir,
        seed=seed,
        iterations=10**6,
        prompts_per_iteration=budget.prompts_per_iteration,
        group_size=budget.group_size,
        eval_seeds=budget.eval_seeds,
        **{**TOY_TRAIN, **(settings or {}), **METHODS[method]},
    )
    pipe, train_prompts, eval_prompts = load_pipeline("toy")
    trainer = Trainer(config, pipe, get_reward("toy"), train_prompts, eval_prompts)
    seconds, nfe, iterations = 0.0, 0, []
    points = [{"iteration": 0, "seconds": 0.0, "nfe": 0, "reward": trainer.evaluate()["reward_mean"]}]
    next_eval = budget.eval_every_s
    while seconds < budget.train_s:
        t0 = time.perf_counter()
        m = trainer.iteration()
        seconds += time.perf_counter() - t0
        nfe += m["nfe"]
        iterations.append({"seconds": m["iteration_s"], "nfe": m["nfe"], "nfe_per_trajectory": m["nfe_per_trajectory"]})
        if seconds >= next_eval or seconds >= budget.train_s:
            points.append(
                {
                    "iteration": m["iteration"],
                    "seconds": seconds,
                    "nfe": nfe,
                    "reward": trainer.evaluate()["reward_mean"],
                }
            )
            next_eval = (seconds // budget.eval_every_s + 1) * budget.eval_every_s
    print(
        f"[time-to-reward] {method} seed {seed}: {points[0]['reward']:.4f} → {points[-1]['reward']:.4f} "
        f"in {len(iterations)} iterations, {seconds:.0f} s",
        flush=True,
    )
    return {"method": method, "seed": seed, "points": points, "iterations": iterations}


def _train_for_in_worker(threads: int, *args) -> dict:
    """`train_for` in a process-pool worker, with `threads` torch threads like every other run."""
    torch.set_num_threads(threads)
    return train_for(*args)


def summarize(runs: list[dict]) -> dict:
    """Per method: evaluation points averaged over seeds (by index), targets reached, seconds and NFE per iteration."""
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    curves = {}
    for method, rs in by_method.items():
        n = min(len(r["points"]) for r in rs)
        curves[method] = {
            key: [sum(r["points"][i][key] for r in rs) / len(rs) for i in range(n)]
            for key in ("seconds", "nfe", "reward")
        }
    pretrained = curves[next(iter(curves))]["reward"][0]
    targets = {f"pretrained + {g:.2f}": pretrained + g for g in TARGET_GAINS}
    if "flow_grpo" in curves:
        targets["flow_grpo final"] = curves["flow_grpo"]["reward"][-1]
    methods = {}
    for method, rs in by_method.items():
        its = [it for r in rs for it in r["iterations"]]
        points = [
            dict(zip(("seconds", "nfe", "reward"), p))
            for p in zip(*(curves[method][k] for k in ("seconds", "nfe", "reward")))
        ]
        methods[method] = {
            "final_reward": curves[method]["reward"][-1],
            "iterations": len(its) / len(rs),
            "seconds_per_iteration": sum(i["seconds"] for i in its) / len(its),
            "nfe_per_iteration": sum(i["nfe"] for i in its) / len(its),
            "nfe_per_trajectory": sum(i["nfe_per_trajectory"] for i in its) / len(its),
            "seconds_to": {name: time_to_target(points, t) for name, t in targets.items()},
            "nfe_to": {name: time_to_target(points, t, "nfe") for name, t in targets.items()},
        }
    return {"pretrained": pretrained, "targets": targets, "curves": curves, "methods": methods}


def report(summary: dict) -> str:
    """The markdown table of a summary."""
    names = list(summary["targets"])
    fmt = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        "| method | final reward | iterations | s / iteration | NFE / trajectory | "
        + " | ".join(f"s to {n} ({summary['targets'][n]:.3f})" for n in names)
        + " |",
        "|---" * (5 + len(names)) + "|",
    ]
    for method, m in summary["methods"].items():
        lines.append(
            f"| {method} | {m['final_reward']:.4f} | {m['iterations']:.0f} | {m['seconds_per_iteration']:.2f} | "
            f"{m['nfe_per_trajectory']:.1f} | " + " | ".join(fmt(m["seconds_to"][n]) for n in names) + " |"
        )
    return "\n".join(lines) + "\n"


def run_time_to_reward(
    out: str,
    quick: bool = False,
    seeds=None,
    threads: int = 1,
    methods=None,
    budget: Budget | None = None,
    settings: dict | None = None,
    workers: int = 1,
    train_s: float | None = None,
) -> dict:
    """Train every method for the same training-time budget (`train_s` overrides the budget's), in `workers`
    processes at once (1: one run at a time) with `threads` threads each."""
    from ..util.plots import plot_time_to_reward

    commit = source_commit()
    budget = budget or (QUICK if quick else FULL)
    if train_s is not None:
        if not train_s > 0:
            raise ValueError(f"train_s must be > 0 seconds, got {train_s}")
        budget = dataclasses.replace(budget, train_s=float(train_s))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    seeds = list(seeds) if seeds else ([0] if quick else [0, 1, 2])
    methods = list(methods or METHODS)
    torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    schedule = "one run at a time" if workers == 1 else f"{workers} runs at once, each in its own process"
    print(
        f"[time-to-reward] {len(methods)} methods × {len(seeds)} seeds, {budget.train_s:.0f} training seconds "
        f"each; {schedule}, {threads} torch thread(s) each, so wall times compare",
        flush=True,
    )
    jobs = [(m, s) for s in seeds for m in methods]
    if workers == 1:
        runs = [train_for(m, s, budget, out, settings) for m, s in jobs]
    else:  # every run in its own process with the same threads: each method meets the same load
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = [ex.submit(_train_for_in_worker, threads, m, s, budget, out, settings) for m, s in jobs]
            runs = [f.result() for f in futures]
    summary = {
        "format": FORMAT,
        "commit": commit,
        "budget": budget.__dict__,
        "seeds": seeds,
        "threads": threads,
        "schedule": schedule,
        **summarize(runs),
        "runs": runs,
    }
    with open(os.path.join(out, "time_to_reward.json"), "w") as f:
        json.dump(summary, f, indent=1)
    table = report(summary)
    with open(os.path.join(out, "time_to_reward.md"), "w") as f:
        f.write(table)
    plot_time_to_reward(
        summary["curves"],
        os.path.join(out, "time_to_reward.png"),
        {
            "pretrained": summary["pretrained"],
            **(
                {"flow_grpo final": summary["targets"]["flow_grpo final"]}
                if "flow_grpo final" in summary["targets"]
                else {}
            ),
        },
    )
    print(table, flush=True)
    return summary
