"""The benchmark's Markdown report: per-run table, DenseGRPO / Flow-GRPO ratios against the NFE prediction."""

from __future__ import annotations

MiB = 2**20


# ----------------------------------------------------------------------------------------- report
def ratios(runs: list[dict]) -> list[dict]:
    """DenseGRPO / Flow-GRPO per (G, checkpointing): measured rollout and iteration time vs the NFE prediction."""
    out = []
    for d in (r for r in runs if r["mode"] == "dense_grpo" and r.get("rollout_s")):
        f = next(
            (
                r
                for r in runs
                if r["mode"] == "flow_grpo"
                and r.get("rollout_s")
                and (r["group_size"], r["grad_checkpointing"]) == (d["group_size"], d["grad_checkpointing"])
            ),
            None,
        )
        if f:
            out.append(
                {
                    "group_size": d["group_size"],
                    "grad_checkpointing": d["grad_checkpointing"],
                    "rollout_time_measured": d["rollout_s"] / f["rollout_s"],
                    "rollout_nfe_predicted": d["nfe_per_trajectory"] / f["nfe_per_trajectory"],
                    "iteration_time_measured": d["iteration_s"] / f["iteration_s"],
                }
            )
    return out


def _mib(x) -> str:
    return "–" if x is None else f"{x / MiB:.1f}"


def _sec(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(result: dict) -> str:
    config, dev, m = result["config"], result["device"], result["model"]
    cpu = dev["kind"] == "cpu"
    lines = [
        f"{result['model_description']}: width {m['width']}, depth {m['depth']}, {m['tokens']} image + "
        f"{m['context_tokens']} text tokens, {m['params'] / 1e6:.1f} M parameters; T = {config['steps']}, "
        f"{config['prompts']} prompt(s) × G, CFG on, {config['dtype']}, max_batch {config['max_batch']}, "
        f"train_batch {config['train_batch']}, LoRA r = {config['lora_rank']}",
        f"Device: {dev['name']} ({dev['kind']}, torch {result['torch']}, {result['threads']} thread(s))",
        "",
    ]
    if result.get("rollouts"):
        lines += [
            "| rollout | NFE / trajectory (measured) | predicted | forward calls | seconds |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['nfe_per_trajectory']:.0f} | {v['predicted_nfe']} | {v['forward_calls']} | "
            f"{v['seconds']:.3f} |"
            for k, v in result["rollouts"].items()
        ]
        lines.append("")
    peak_name = "peak (MiB)" if not cpu else "≈ peak (MiB)"
    lines += [
        f"| mode | G | grad ckpt | s / iteration | rollout s | decode+reward s | update s | NFE / traj. | "
        f"rollout Δpeak | reward Δpeak | update Δpeak | {peak_name} | predicted s | predicted peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if r.get("error"):
            lines.append(
                f"| {r['mode']} | {r['group_size']} | {'on' if r['grad_checkpointing'] else 'off'} | "
                f"{r['error']} |" + " |" * 10
            )
            continue
        p = r.get("predicted", {})
        lines.append(
            f"| {r['mode']} | {r['group_size']} | {'on' if r['grad_checkpointing'] else 'off'} | "
            f"{_sec(r['iteration_s'])} | {_sec(r['rollout_s'])} | {_sec(r['reward_s'])} | "
            f"{_sec(r['update_s'])} | "
            f"{r['nfe_per_trajectory']:.0f} | {_mib(r['rollout_peak_delta_bytes'])} | "
            f"{_mib(r['reward_peak_delta_bytes'])} | {_mib(r['update_peak_delta_bytes'])} | "
            f"{_mib(r['peak_bytes'])} | {_sec(p.get('seconds_per_iteration'))} | "
            f"{_mib(p.get('peak_bytes'))} |"
        )
    done = [r for r in result["runs"] if not r.get("error")]
    if done:
        r = done[0]
        lines += [
            "",
            f"Resident (MiB): weights {_mib(r['weights_bytes'])}, LoRA {_mib(r['lora_bytes'])}, optimizer "
            f"{_mib(r['optimizer_bytes'])}, decoder + reward {_mib(r['reward_models_bytes'])}. "
            "Δpeak = the most memory a stage held above what was allocated when it began.",
        ]
    for q in result["ratios"]:
        lines.append(
            f"- G = {q['group_size']}, checkpointing {'on' if q['grad_checkpointing'] else 'off'}: "
            f"DenseGRPO / Flow-GRPO rollout time {q['rollout_time_measured']:.2f}× (NFE predicts "
            f"{q['rollout_nfe_predicted']:.2f}×), whole iteration {q['iteration_time_measured']:.2f}×"
        )
    if result.get("rollouts"):
        ro = result["rollouts"]
        speed = ro["naive"]["seconds"] / ro["fused"]["seconds"]
        lines.append(f"- fused sweep {speed:.2f}× the speed of the naive path")
    if result.get("skipped"):
        lines.append(f"- skipped (time budget): {', '.join(result['skipped'])}")
    lines.append(f"- estimator constants: {result['constants']['source']}")
    return "\n".join(lines) + "\n"
