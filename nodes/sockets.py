"""Socket types and widget specs that several node modules share (one source; node modules never import
each other for constants)."""

from __future__ import annotations

PSI_TYPE = "DENSEGRPO_PSI"
PSI_TOOLTIP = (
    "Per-step SDE noise level ψ(t) (DENSEGRPO_PSI). Uniform = Flow-GRPO's single `a`; a calibrated ψ "
    "comes from the DenseGRPO Calibrate node. Checked against the step count where it is used."
)
REWARD_TYPE = "REWARD_MODEL"
JOB_TYPE = "DENSEGRPO_JOB"

SEED = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 0xFFFFFFFFFFFFFFFF,
        "control_after_generate": True,
        "tooltip": "seed of the start noise and of the SDE noise",
    },
)
STEPS = ("INT", {"default": 10, "min": 1, "max": 100, "tooltip": "sampling steps T (the paper trains with 10)"})
CFG = ("FLOAT", {"default": 4.5, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "CFG scale"})
GROUP = ("INT", {"default": 8, "min": 2, "max": 256, "tooltip": "trajectories per prompt (GRPO group size)"})
MAX_BATCH_INPUT = (
    "INT",
    {
        "default": 32,
        "min": 1,
        "max": 4096,
        "tooltip": "most latents per model call (lower it if you run out of memory)",
    },
)


def psi_input(tooltip: str = PSI_TOOLTIP) -> tuple:
    return (PSI_TYPE, {"tooltip": tooltip})


def scheduler_input(tooltip: str = "sigma schedule (normal = Flow-GRPO's for SD3)") -> tuple:
    """ComfyUI's scheduler names, default `normal` (the SD3 scheduler grid Flow-GRPO samples with,
    docs/method.md §1)."""
    import comfy.samplers

    return (list(comfy.samplers.SCHEDULER_NAMES), {"default": "normal", "tooltip": tooltip})
