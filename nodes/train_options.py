"""The settings of DenseGRPO Training Options (the node is in train_nodes.py): the Train node's less-used
settings on a node of their own.

The Train node keeps the essentials (model, clip, vae, reward, ψ, prompts, name, iterations, group size, steps,
cfg, scheduler, learning rate, mode); everything else is an input of this node, with the same defaults, and
reaches the Train node through its optional `options` input (a DENSEGRPO_TRAIN_OPTIONS dict). Without it, the
Train node trains with the defaults.

Old prompts keep working: the Train node declares every option name as a hidden input as well, so an API
prompt written for the 31-widget Train node (`"beta": 0.01` on the Train node itself) still passes its values,
and the panel's Resume still sets `resume_job` on the Train node. Values given on the Train node win over the
options node's (`resolve`).
"""

from __future__ import annotations

import os

from . import comfy_bridge as bridge
from .sockets import REWARD_TYPE

OPTIONS_TYPE = "DENSEGRPO_TRAIN_OPTIONS"
OPTIONS_NODE = "DenseGRPO Training Options"


def input_txt_files() -> list[str]:
    import folder_paths

    folder = folder_paths.get_input_directory()
    names = [f for f in os.listdir(folder) if f.lower().endswith(".txt")] if os.path.isdir(folder) else []
    return ["(none)"] + sorted(names)


def option_inputs() -> dict[str, tuple]:
    """The options in the order the node shows them: name → ComfyUI input spec (all optional)."""
    return {
        "seed": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 0xFFFFFFFFFFFFFFFF,
                "control_after_generate": False,  # a new seed would start another job on every queue
                "tooltip": "seed of the prompt order, the LoRA init, the start noise and the SDE noise",
            },
        ),
        "beta": (
            "FLOAT",
            {
                "default": 0.04,
                "min": 0.0,
                "max": 10.0,
                "step": 0.001,
                "tooltip": "KL weight β to the base model (paper: 0.04 for text rewards)",
            },
        ),
        "save_every": (
            "INT",
            {
                "default": 10,
                "min": 1,
                "max": 100000,
                "tooltip": "save the LoRA and a checkpoint every N iterations (and at the end)",
            },
        ),
        "prompts_file": (
            input_txt_files(),
            {"tooltip": "a .txt file in ComfyUI's input folder, one prompt per line (overrides the prompts text)"},
        ),
        "prompts_per_iteration": ("INT", {"default": 2, "min": 1, "max": 256, "tooltip": "prompts per iteration"}),
        "lora_rank": ("INT", {"default": 32, "min": 1, "max": 512, "tooltip": "LoRA rank r"}),
        "lora_alpha": ("FLOAT", {"default": 64.0, "min": 0.1, "max": 4096.0, "tooltip": "LoRA alpha α"}),
        "clip_range": (
            "FLOAT",
            {"default": 1e-4, "min": 1e-6, "max": 1.0, "step": 1e-5, "tooltip": "PPO clip range ε (paper: 1e-4)"},
        ),
        "train_batch": ("INT", {"default": 8, "min": 1, "max": 1024, "tooltip": "trajectories per optimizer step"}),
        "max_batch": ("INT", {"default": 32, "min": 1, "max": 4096, "tooltip": "most latents per model call"}),
        "guidance": (
            "FLOAT",
            {
                "default": -1.0,
                "min": -1.0,
                "max": 100.0,
                "step": 0.1,
                "tooltip": "guidance-embedding value of guidance-distilled models (FLUX.1-dev, FLUX.2-dev), as "
                "FluxGuidance sets it; -1 = the model family's default; ignored by models without one "
                "(those use cfg)",
            },
        ),
        "uncond_grad": (
            "BOOLEAN",
            {
                "default": True,
                "tooltip": "backpropagate through CFG's unconditional pass too, as Flow-GRPO does; off = detach "
                "it: less memory and a different gradient",
            },
        ),
        "gradient_checkpointing": (
            "BOOLEAN",
            {
                "default": True,
                "tooltip": "recompute transformer blocks in the backward pass: far less memory, ~30% slower updates",
            },
        ),
        "bf16_autocast": (
            "BOOLEAN",
            {
                "default": False,
                "tooltip": "run rollouts and updates under bfloat16 autocast (log-probs and rewards stay fp32)",
            },
        ),
        "offload_reward": (
            "BOOLEAN",
            {"default": False, "tooltip": "keep the VAE and reward model on the CPU except while scoring"},
        ),
        "free_cached_models": (
            "BOOLEAN",
            {"default": False, "tooltip": "unload ComfyUI's cached models first, to make room for the job"},
        ),
        "allow_over_memory": (
            "BOOLEAN",
            {"default": False, "tooltip": "start even if the memory estimate exceeds the free memory"},
        ),
        "sde_window": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 1000,
                "tooltip": "SDE window W: only W consecutive steps are stochastic and trained, the others run as "
                "ODE (Flow-GRPO-Fast / MixGRPO); dense modes then complete only the window's latents, far fewer "
                "model calls. 0 = every step (off)",
            },
        ),
        "sde_window_schedule": (
            ["random", "sliding"],
            {
                "default": "random",
                "tooltip": "where the window sits: random = a new start each iteration in the first half of the "
                "steps (Flow-GRPO-Fast); sliding = moves one step every 25 iterations (MixGRPO)",
            },
        ),
        "eval_every": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 100000,
                "tooltip": "evaluate every N iterations: plain ODE samples of the first 4 prompts scored by the "
                "training reward and eval_reward, drawn in the panel's curve; 0 = no evaluations",
            },
        ),
        "eval_reward": (
            REWARD_TYPE,
            {
                "tooltip": "a held-out reward (e.g. aesthetic next to PickScore) that also scores every "
                "evaluation, to see reward hacking: the training reward rises while this one falls",
            },
        ),
        "resume_job": (
            "STRING",
            {"default": "", "tooltip": "id of a stopped/failed job to continue (same settings); empty = a new job"},
        ),
        "reward_timeout_s": (
            "FLOAT",
            {
                "default": 600.0,
                "min": 0.0,
                "max": 86400.0,
                "step": 10.0,
                "tooltip": "seconds one reward call may take before the job fails with a message naming the reward "
                "(it stays resumable); 0 = no limit",
            },
        ),
    }


def option_defaults() -> dict:
    """name → the value the Train node trains with when nothing sets it (eval_reward: none)."""
    out = {}
    for name, spec in option_inputs().items():
        kind, opts = spec[0], spec[1]
        out[name] = opts["default"] if "default" in opts else (kind[0] if isinstance(kind, list) else None)
    return out


def resolve(options, on_train_node: dict, node: str) -> dict:
    """The options the Train node trains with: the defaults, then the options node's values, then values given
    on the Train node itself (an old API prompt, the panel's Resume)."""
    values = option_defaults()
    if options is not None:
        if not isinstance(options, dict) or options.get("type") != OPTIONS_TYPE:
            raise bridge.input_error(node, "options", f"must come from the {OPTIONS_NODE} node, got {type(options)}")
        values.update({k: v for k, v in options.items() if k in values})
    values.update({k: v for k, v in on_train_node.items() if k in values and v is not None})
    return values


def check_prompts_file(prompts_file, node: str) -> str | None:
    """Why a prompts_file value is refused, or None when it is "(none)" or a .txt file in the input folder."""
    if prompts_file in (None, "", "(none)"):
        return None
    import folder_paths

    if prompts_file not in input_txt_files() or not os.path.isfile(folder_paths.get_annotated_filepath(prompts_file)):
        return f"{node}: input 'prompts_file' {prompts_file!r} is not a .txt file in ComfyUI's input folder"
    return None


def check_resume_job(resume_job, node: str) -> str | None:
    """Why a resume_job value is refused, or None when it is empty or a resumable job."""
    if resume_job is None or not str(resume_job).strip():
        return None
    from .job_service import get_manager
    from .public import comfy_roots, public_string

    try:
        get_manager().resumable(str(resume_job).strip())
    except (KeyError, ValueError) as e:
        return f"{node}: input 'resume_job' {public_string(str(e).strip(chr(39) + chr(34)), comfy_roots())}"
    return None
