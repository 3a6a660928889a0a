"""Background GRPO-LoRA training from a workflow: Train (starts a job, returns at once), Status, Stop.

The Train node validates, encodes the prompts, takes private copies of the patched MODEL and the VAE on
the executor thread and hands them to a background job (densegrpo_core.jobs.manager); ComfyUI's own copy of the
weights is offloaded and the job's memory reserved meanwhile (comfy_memory). LoRAs land in
models/loras/densegrpo/ so LoraLoaderModelOnly lists them; job folders live in output/densegrpo/jobs/.

Queueing the Train node again with the same settings while its job is queued or running returns that job
(the settings key covers every widget, the prompts, the reward, ψ and a fingerprint of the MODEL). While
a job runs, its Train node shows iteration / total, reward and ETA and every event goes to the browser as a
websocket message (job_service: the JobManager, event forwarding, progress text; web/densegrpo.js draws the panel).
"""

from __future__ import annotations

import dataclasses
import os

from densegrpo_core.method.advantages import ADVANTAGE_MODES
from densegrpo_core.training.trainer import TrainConfig, check_resumable
from densegrpo_core.util.atomic import atomic_write_json

from . import comfy_bridge as bridge
from .job_service import PROMPT_FILE, client_id, get_manager, show_progress
from .sockets import CFG, GROUP, JOB_TYPE, REWARD_TYPE, SEED, STEPS, psi_input, scheduler_input
from .web_contract import JOB_FILES

TRAIN_NODE = "DenseGRPO Train LoRA"
SEED_TOOLTIP = (
    "seed of the prompt order, the start noise and the SDE noise; the DenseGRPO front-end keeps it "
    "fixed after each run, so queueing again does not start another job"
)


def lora_dir() -> str:
    import folder_paths

    return os.path.join(folder_paths.get_folder_paths("loras")[0], "densegrpo")


def model_fingerprint(model) -> dict:
    """What identifies a MODEL for the duplicate check without hashing it: its class, size, the LoRAs/patches
    ComfyUI will apply (keys and strengths) and a few weights."""
    from densegrpo_core.jobs.manager import settings_key

    params = list(model.model.diffusion_model.parameters())
    head = [float(p.detach().flatten()[:16].float().sum()) for p in (params[:1] + params[-1:])]
    patches = sorted((k, [(p[0], p[2]) for p in v]) for k, v in (getattr(model, "patches", None) or {}).items())
    return {
        "class": type(model.model).__name__,
        "numel": sum(p.numel() for p in params),
        "head": head,
        "patches": settings_key(patches),
    }


def read_prompts(text: str, prompts_file: str, node: str) -> list[str]:
    """Prompts from the multiline text, or from a .txt file in ComfyUI's input folder (one per line)."""
    if prompts_file and prompts_file != "(none)":
        import folder_paths

        path = folder_paths.get_annotated_filepath(prompts_file)
        if not os.path.isfile(path):
            raise bridge.input_error(node, "prompts_file", f"{prompts_file!r} not found in the input folder")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return bridge.parse_prompts(text, node)


def input_txt_files() -> list[str]:
    import folder_paths

    folder = folder_paths.get_input_directory()
    names = [f for f in os.listdir(folder) if f.lower().endswith(".txt")] if os.path.isdir(folder) else []
    return ["(none)"] + sorted(names)


class TrainLoRA:
    DESCRIPTION = (
        "Start DenseGRPO (or Flow-GRPO) LoRA training of this MODEL on your prompts and reward, in the "
        "background: the prompt finishes at once and ComfyUI stays usable. LoRAs are saved to "
        "models/loras/densegrpo/<name>_<iteration>.safetensors and <name>_latest.safetensors."
    )
    CATEGORY = "DenseGRPO/training"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = (JOB_TYPE, "STRING")
    RETURN_NAMES = ("job", "status")
    OUTPUT_TOOLTIPS = ("handle of the started job, for DenseGRPO Training Status / Stop", "what was started")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "the flow model to train a LoRA for (with any LoRAs already applied)"}),
                "clip": ("CLIP", {"tooltip": "encodes the training prompts"}),
                "vae": ("VAE", {"tooltip": "decodes samples for the reward"}),
                "reward_model": (REWARD_TYPE, {"tooltip": "the reward to maximise"}),
                "psi": psi_input(),
                "prompts": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "training prompts, one per line (or choose prompts_file)",
                    },
                ),
                "negative_prompt": ("STRING", {"default": "", "tooltip": "negative prompt for CFG"}),
                "latent_image": ("LATENT", {"tooltip": "an empty latent of the training resolution (batch ignored)"}),
                "lora_name": (
                    "STRING",
                    {
                        "default": "densegrpo_lora",
                        "tooltip": "file name stem under models/loras/densegrpo/ (sanitised)",
                    },
                ),
                "iterations": ("INT", {"default": 100, "min": 1, "max": 100000, "tooltip": "GRPO iterations"}),
                "group_size": GROUP,
                "steps": STEPS,
                "cfg": CFG,
                "scheduler": scheduler_input(
                    "the scheduler you will sample with: training uses ComfyUI's sigmas of this scheduler for this "
                    "MODEL, so the LoRA learns exactly the steps your KSampler takes (normal = Flow-GRPO's for SD3)"
                ),
                "advantage_mode": (
                    list(ADVANTAGE_MODES),
                    {"default": "dense_grpo", "tooltip": "dense_grpo = DenseGRPO; flow_grpo = baseline"},
                ),
                "learning_rate": (
                    "FLOAT",
                    {
                        "default": 3e-4,
                        "min": 1e-7,
                        "max": 1e-1,
                        "step": 1e-5,
                        "tooltip": "AdamW learning rate of the LoRA",
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
                "seed": ("INT", {**SEED[1], "tooltip": SEED_TOOLTIP}),
            },
            "optional": {
                "prompts_file": (
                    input_txt_files(),
                    {
                        "tooltip": "a .txt file in ComfyUI's input folder, one prompt "
                        "per line (overrides the prompts text)"
                    },
                ),
                "prompts_per_iteration": (
                    "INT",
                    {"default": 2, "min": 1, "max": 256, "tooltip": "prompts per iteration"},
                ),
                "lora_rank": ("INT", {"default": 32, "min": 1, "max": 512, "tooltip": "LoRA rank r"}),
                "lora_alpha": ("FLOAT", {"default": 64.0, "min": 0.1, "max": 4096.0, "tooltip": "LoRA alpha α"}),
                "clip_range": (
                    "FLOAT",
                    {
                        "default": 1e-4,
                        "min": 1e-6,
                        "max": 1.0,
                        "step": 1e-5,
                        "tooltip": "PPO clip range ε (paper: 1e-4)",
                    },
                ),
                "train_batch": (
                    "INT",
                    {"default": 8, "min": 1, "max": 1024, "tooltip": "trajectories per optimizer step"},
                ),
                "max_batch": ("INT", {"default": 32, "min": 1, "max": 4096, "tooltip": "most latents per model call"}),
                "resume_job": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "id of a stopped/failed job to continue (same settings); empty = a new job",
                    },
                ),
                "allow_over_memory": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "start even if the memory estimate exceeds the free memory"},
                ),
                "gradient_checkpointing": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "recompute transformer blocks in "
                        "the backward pass: far less memory, "
                        "~30% slower updates",
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
                "sde_window": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 1000,
                        "tooltip": "SDE window W: only W consecutive steps are stochastic and trained, the others "
                        "run as ODE (Flow-GRPO-Fast / MixGRPO); dense modes then complete only the window's "
                        "latents, far fewer model calls. 0 = every step (off)",
                    },
                ),
                "sde_window_schedule": (
                    ["random", "sliding"],
                    {
                        "default": "random",
                        "tooltip": "where the window sits: random = a new start each iteration in the first half "
                        "of the steps (Flow-GRPO-Fast); sliding = moves one step every 25 iterations (MixGRPO)",
                    },
                ),
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
                "eval_every": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 100000,
                        "tooltip": "evaluate every N iterations: plain ODE samples of the first 4 prompts scored by "
                        "the training reward and eval_reward, drawn in the panel's curve; 0 = no evaluations",
                    },
                ),
                "eval_reward": (
                    REWARD_TYPE,
                    {
                        "tooltip": "a held-out reward (e.g. aesthetic next to PickScore) that also scores every "
                        "evaluation, to see reward hacking: the training reward rises while this one falls",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompts=None, prompts_file=None, resume_job=None):
        """Checked when the prompt is queued, before anything runs (linked inputs arrive as None)."""
        node = TRAIN_NODE
        if prompts_file not in (None, "", "(none)"):
            import folder_paths

            if prompts_file not in input_txt_files() or not os.path.isfile(
                folder_paths.get_annotated_filepath(prompts_file)
            ):
                return f"{node}: input 'prompts_file' {prompts_file!r} is not a .txt file in ComfyUI's input folder"
        elif prompts is not None and not str(prompts).strip():
            return f"{node}: input 'prompts' is empty: write one training prompt per line, or choose a prompts_file"
        if resume_job is not None and str(resume_job).strip():
            try:
                get_manager().resumable(str(resume_job).strip())
            except (KeyError, ValueError) as e:
                from .public import comfy_roots, public_string

                return f"{node}: input 'resume_job' {public_string(str(e).strip(chr(39) + chr(34)), comfy_roots())}"
        return True

    def execute(
        self,
        model,
        clip,
        vae,
        reward_model,
        psi,
        prompts,
        negative_prompt,
        latent_image,
        lora_name,
        iterations,
        group_size,
        steps,
        cfg,
        scheduler,
        advantage_mode,
        learning_rate,
        beta,
        save_every,
        seed,
        prompts_file="(none)",
        prompts_per_iteration=2,
        lora_rank=32,
        lora_alpha=64.0,
        clip_range=1e-4,
        train_batch=8,
        max_batch=32,
        resume_job="",
        allow_over_memory=False,
        free_cached_models=False,
        gradient_checkpointing=True,
        bf16_autocast=False,
        offload_reward=False,
        guidance=-1.0,
        sde_window=0,
        sde_window_schedule="random",
        eval_every=0,
        eval_reward=None,
        unique_id=None,
        prompt=None,
    ):
        from densegrpo_core.jobs.training_work import training_work

        from .comfy_memory import check_memory, job_work, weight_dtypes
        from .comfy_training import clone_tensors, private_pipeline, train_targets, with_guidance

        node = TRAIN_NODE
        prompt_list = read_prompts(prompts, prompts_file, node)
        bridge.check_group_size(group_size, node)
        ms = bridge.require_flow_model(model, node)
        targets = train_targets(model, node)  # the family's LoRA targets, or `auto` ones with a note
        sigmas = bridge.flow_sigmas(model, scheduler, steps, node)
        grid_name = f"the grid of scheduler {scheduler!r} ({int(steps)} steps)"
        psi_values = bridge.resolve_psi(psi, sigmas, node, grid_name).values
        name = bridge.sanitize_name(lora_name, "densegrpo_lora")
        manager = get_manager()
        resume_ckpt = None
        if resume_job.strip():
            try:
                resume_ckpt = manager.resumable(resume_job.strip())
            except (KeyError, ValueError) as e:
                raise bridge.input_error(node, "resume_job", str(e).strip("'\"")) from None
        try:
            config = TrainConfig(
                out_dir="(job folder)",
                seed=int(seed),
                device=str(model.load_device),
                iterations=int(iterations),
                steps=int(steps),
                shift=float(getattr(ms, "shift", 3.0)),
                grid=sigmas.tolist(),
                scheduler=scheduler,
                cfg_scale=float(cfg),
                psi=psi_values,
                max_batch=int(max_batch),
                advantage_mode=advantage_mode,
                prompts_per_iteration=int(prompts_per_iteration),
                group_size=int(group_size),
                clip_range=float(clip_range),
                beta=float(beta),
                lr=float(learning_rate),
                train_batch=int(train_batch),
                lora_rank=int(lora_rank),
                lora_alpha=float(lora_alpha),
                reward=getattr(reward_model, "name", type(reward_model).__name__),
                eval_every=int(eval_every),
                eval_seeds=(0,),
                eval_rewards=(reward_name(eval_reward),) if eval_reward is not None else (),
                save_every=int(save_every),
                grad_checkpointing=bool(gradient_checkpointing),
                dtype="bfloat16" if bf16_autocast else "float32",
                offload_reward=bool(offload_reward),
                sde_window=int(sde_window),
                sde_window_schedule=str(sde_window_schedule),
            )
        except ValueError as e:
            raise bridge.NodeInputError(f"{node}: {e}") from None
        if resume_ckpt:
            try:
                check_resumable(config, resume_ckpt)
            except (ValueError, FileNotFoundError) as e:
                raise bridge.input_error(
                    node, "resume_job", f"{resume_job.strip()}: {e} (use the same settings)"
                ) from None
        samples = bridge.model_latent(model, latent_image["samples"], node)  # (B, 16, 1, H, W) for Qwen-Image
        from densegrpo_core.jobs.manager import settings_key

        key = settings_key(
            {
                "config": dataclasses.asdict(config),
                "prompts": prompt_list,
                "negative": negative_prompt,
                "guidance": float(guidance),
                "name": name,
                "resume": resume_job.strip(),
                "latent": list(samples.shape[1:]),
                "model": model_fingerprint(model),
                "reward": config.reward,
                "reward_class": type(reward_model).__name__,
                "eval_reward_class": type(eval_reward).__name__ if eval_reward is not None else None,
            }
        )
        client = client_id()
        active = manager.find_active(key)
        if active is not None:  # the same settings while its job is queued or running
            return self.duplicate(active, unique_id, client)
        conds = {p: c for p, c in zip(prompt_list, bridge.encode_prompts(clip, prompt_list, node))}
        negative = bridge.encode_prompts(clip, [negative_prompt], node)[0]
        conds = {p: with_guidance(model, c, guidance) for p, c in conds.items()}
        negative = with_guidance(model, negative, guidance)
        context_tokens = max(int(c[0][0].shape[1]) for c in conds.values())
        if free_cached_models:
            import comfy.model_management

            comfy.model_management.unload_all_models()
            comfy.model_management.soft_empty_cache()
        est = check_memory(model, config, samples.shape[1:], context_tokens, allow_over_memory, node, targets)
        stored, computed = weight_dtypes(model)
        weights_text = f"base weights {stored}" + (f", computed in {computed} per layer" if computed else "")
        latent = clone_tensors(samples[:1].float().to(model.load_device))
        pipe = private_pipeline(model, vae, conds, negative, latent, node, targets)
        pipe.decode.to(model.load_device)
        work = job_work(
            training_work(
                config,
                pipe,
                reward_model,
                prompt_list,
                lora_dir=lora_dir(),
                lora_name=name,
                resume_checkpoint=resume_ckpt,
                sample_prompts=prompt_list[:4],
                eval_prompts=prompt_list[:4] if int(eval_every) else (),
                eval_rewards={reward_name(eval_reward): eval_reward} if eval_reward is not None else {},
            ),
            reserve_bytes=est.reserve_bytes,
        )
        del pipe  # the job's work holds the only reference to the copy
        job, created = manager.submit_unique(
            key,
            name,
            work,
            device=config.device,
            total=int(iterations),
            resume_of=resume_job.strip() or None,
            start_iteration=manager.get(resume_job.strip()).iteration if resume_ckpt else 0,
            meta={
                "advantage_mode": advantage_mode,
                "lora_dir": lora_dir(),
                "model": type(model.model).__name__,
                "reward": config.reward,
                "node_id": None if unique_id is None else str(unique_id),
                **({"targets_note": targets.note} if targets.note else {}),
            },
        )
        if not created:
            return self.duplicate(job, unique_id, client)
        self.remember(job, unique_id, client, prompt)
        status = (
            f"job {job.id} {job.state.value}: {advantage_mode} LoRA '{name}', {iterations} iterations, "
            f"{len(prompt_list)} prompts, G={group_size}, T={steps}; estimate {est.summary()}; {weights_text}"
            + (f", resuming {resume_job.strip()}" if resume_ckpt else "")
            + (f"; {targets.note}" if targets.note else "")
        )
        return {"ui": {"text": [status]}, "result": (job.id, status)}

    @staticmethod
    def remember(job, unique_id, client, prompt) -> None:
        """Where to show the job's progress, and the prompt that started it (for Resume in the panel)."""
        show_progress(job, unique_id, client)
        if isinstance(prompt, dict):
            path = os.path.join(job.folder, PROMPT_FILE)
            try:
                atomic_write_json(path, prompt, indent=None)
            except (OSError, TypeError, ValueError):
                pass  # Resume from the panel is then unavailable, nothing else

    @staticmethod
    def duplicate(job, unique_id, client):
        show_progress(job, unique_id, client)
        status = (
            f"job {job.id} {job.state.value}: already training with these settings (iteration "
            f"{job.iteration}/{job.total}); no second job started. Change a setting or the name to start "
            f"another, or stop it in the DenseGRPO panel"
        )
        return {"ui": {"text": [status]}, "result": (job.id, status)}


def job_inputs():
    """The optional inputs naming a job: a connected handle or a typed id."""
    return {
        "required": {},
        "optional": {
            "job": (JOB_TYPE, {"tooltip": "the job handle from DenseGRPO Train LoRA"}),
            "job_id": ("STRING", {"default": "", "tooltip": "or a job id (see GET /densegrpo/jobs)"}),
        },
    }


def reward_name(reward) -> str:
    """The name a reward model goes by in the job's settings, metrics and panel."""
    return str(getattr(reward, "name", type(reward).__name__))


def find_job(job, job_id: str, node: str):
    """The job of a handle or an id; a clear error when neither is given or the id is unknown."""
    if not job and not str(job_id).strip():
        raise bridge.input_error(node, "job", "is missing: connect a job from DenseGRPO Train LoRA or type a job id")
    key = str(job or job_id).strip()
    try:
        return get_manager().get(key)
    except (KeyError, ValueError):
        raise bridge.input_error(node, "job", f"{key!r} is not a known DenseGRPO job id") from None


class JobNode:
    """What the Status and Stop nodes share: a job input, an output node that runs on every queue."""

    CATEGORY = "DenseGRPO/training"
    FUNCTION = "execute"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return job_inputs()

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")


class TrainingStatus(JobNode):
    DESCRIPTION = (
        "Show a DenseGRPO training job as node outputs: state, iteration, reward curve, the latest "
        "R_t/ΔR_t plot and sample images, as of when it runs (it never caches). The DenseGRPO sidebar "
        "panel shows the same live, without queueing anything."
    )
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("status", "plots")
    OUTPUT_TOOLTIPS = ("the job's state as text", "reward curve, dense-reward plot and samples (when available)")

    def execute(self, job=None, job_id=""):
        import torch
        from PIL import Image

        from densegrpo_core.util.plots import pil_to_tensor

        j = find_job(job, job_id, "DenseGRPO Training Status")
        d = j.to_dict()
        last = j.metrics[-1] if j.metrics else {}
        text = (
            f"job {j.id} [{d['state']}] {j.name}: iteration {j.iteration}/{j.total}"
            + (f", reward {last['reward_mean']:.4f}" if "reward_mean" in last else "")
            + (f"\nlatest LoRA: {os.path.basename(j.loras[-1])}" if j.loras else "")
            + (f"\nerror: {j.error}" if j.error else "")
            + (f"\n{j.meta['targets_note']}" if j.meta.get("targets_note") else "")
        )
        images, ui = [], []
        for name in JOB_FILES:
            path = os.path.join(j.folder, name)
            if os.path.isfile(path):
                with Image.open(path) as im:
                    images.append(pil_to_tensor(im))
                ui.append(self.preview(path, f"{j.id}_{name}"))
        plots = torch.zeros(1, 64, 64, 3)
        if images:
            h = max(i.shape[0] for i in images)
            plots = torch.cat(
                [torch.nn.functional.pad(i, (0, 0, 0, 0, 0, h - i.shape[0]), value=1.0) for i in images], dim=1
            )[None]
        return {"ui": {"text": [text], "images": ui}, "result": (text, plots)}

    @staticmethod
    def preview(path: str, name: str) -> dict:
        """Copy a plot into ComfyUI's temp folder and describe it for the node's image preview."""
        import shutil

        import folder_paths

        folder = folder_paths.get_temp_directory()
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, name))
        return {"filename": name, "subfolder": "", "type": "temp"}


class StopTraining(JobNode):
    DESCRIPTION = "Ask a DenseGRPO training job to stop: it finishes the current iteration, saves the LoRA and exits."
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("status",)
    OUTPUT_TOOLTIPS = ("the job's state after the request",)

    def execute(self, job=None, job_id=""):
        j = get_manager().stop(find_job(job, job_id, "DenseGRPO Stop Training").id)
        text = f"job {j.id}: {j.state.value}"
        return {"ui": {"text": [text]}, "result": (text,)}


NODES = {
    "DenseGRPO_TrainLoRA": (TrainLoRA, "DenseGRPO Train LoRA (background)"),
    "DenseGRPO_TrainingStatus": (TrainingStatus, "DenseGRPO Training Status"),
    "DenseGRPO_StopTraining": (StopTraining, "DenseGRPO Stop Training"),
}
