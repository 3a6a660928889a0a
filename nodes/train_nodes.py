"""Background GRPO-LoRA training from a workflow: Train (starts a job, returns at once), Status, Stop. The
Train node's less-used settings come from DenseGRPO Training Options (train_options.py).

The Train node validates, encodes the prompts, takes private copies of the patched MODEL and the VAE on
the executor thread and hands them to a background job (densegrpo_core.jobs.manager); ComfyUI's own copy of the
weights is offloaded and the job's memory reserved meanwhile (comfy_memory). LoRAs land in
models/loras/densegrpo/ so LoraLoaderModelOnly lists them; job folders live in output/densegrpo/jobs/.

Queueing the Train node again with the same settings while its job is queued or running returns that job
(the settings key covers every setting, the prompts, the reward, ψ and a fingerprint of the MODEL). While
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
from .job_service import PROMPT_FILE, client_id, format_duration, get_manager, show_progress
from .sockets import CFG, GROUP, JOB_TYPE, REWARD_TYPE, STEPS, psi_input, scheduler_input
from .train_options import (
    OPTIONS_NODE,
    OPTIONS_TYPE,
    check_prompts_file,
    check_resume_job,
    option_defaults,
    option_inputs,
    resolve,
)
from .web_contract import JOB_FILES

TRAIN_NODE = "DenseGRPO Train LoRA"
NO_OPTIONS = object()  # VALIDATE_INPUTS: no options input at all (a connected one arrives as None)


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
        # The widgets keep the order of the first ten widgets of the 31-widget node this one replaced, so a
        # saved UI workflow of that node (its widgets_values are matched by position) loads them where they
        # belong; its other values take the defaults (they are on DenseGRPO Training Options now).
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
                        "tooltip": "training prompts, one per line (or a prompts_file on DenseGRPO Training Options)",
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
            },
            "optional": {
                "options": (
                    OPTIONS_TYPE,
                    {
                        "tooltip": "the other settings (KL weight, seed, LoRA rank, batch sizes, memory switches, "
                        "SDE window, evaluations, resume) from DenseGRPO Training Options; unconnected = defaults"
                    },
                ),
            },
            # every option also under its old name, unseen in the UI: an API prompt of the 31-widget node
            # (and the panel's Resume, which sets resume_job here) still passes its values
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", **option_inputs()},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompts=None, options=NO_OPTIONS, prompts_file=None, resume_job=None):
        """Checked when the prompt is queued, before anything runs (linked inputs arrive as None; prompts_file
        and resume_job here are the old names on the Train node itself)."""
        node = TRAIN_NODE
        problem = check_prompts_file(prompts_file, node) or check_resume_job(resume_job, node)
        if problem:
            return problem
        no_file = prompts_file in (None, "", "(none)") and options is NO_OPTIONS  # else the options may name one
        if no_file and prompts is not None and not str(prompts).strip():
            return f"{node}: input 'prompts' is empty: write one training prompt per line, or choose a prompts_file"
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
        options=None,
        unique_id=None,
        prompt=None,
        **on_node,
    ):
        from densegrpo_core.jobs.training_work import training_work

        from .comfy_memory import check_memory, job_work, weight_dtypes
        from .comfy_training import clone_tensors, private_pipeline, train_targets, with_guidance

        node = TRAIN_NODE
        o = resolve(options, on_node, node)
        resume_job = str(o["resume_job"] or "").strip()
        eval_reward, guidance = o["eval_reward"], float(o["guidance"])
        prompt_list = read_prompts(prompts, o["prompts_file"], node)
        bridge.check_group_size(group_size, node)
        ms = bridge.require_flow_model(model, node)
        targets = train_targets(model, node)  # the family's LoRA targets, or `auto` ones with a note
        sigmas = bridge.flow_sigmas(model, scheduler, steps, node)
        grid_name = f"the grid of scheduler {scheduler!r} ({int(steps)} steps)"
        psi_values = bridge.resolve_psi(psi, sigmas, node, grid_name).values
        name = bridge.sanitize_name(lora_name, "densegrpo_lora")
        manager = get_manager()
        resume_ckpt = None
        if resume_job:
            try:
                resume_ckpt = manager.resumable(resume_job)
            except (KeyError, ValueError) as e:
                raise bridge.input_error(node, "resume_job", str(e).strip("'\"")) from None
        try:
            config = TrainConfig(
                out_dir="(job folder)",
                seed=int(o["seed"]),
                device=str(model.load_device),
                iterations=int(iterations),
                steps=int(steps),
                shift=float(getattr(ms, "shift", 3.0)),
                grid=sigmas.tolist(),
                scheduler=scheduler,
                cfg_scale=float(cfg),
                psi=psi_values,
                max_batch=int(o["max_batch"]),
                advantage_mode=advantage_mode,
                prompts_per_iteration=int(o["prompts_per_iteration"]),
                group_size=int(group_size),
                clip_range=float(o["clip_range"]),
                beta=float(o["beta"]),
                lr=float(learning_rate),
                train_batch=int(o["train_batch"]),
                lora_rank=int(o["lora_rank"]),
                lora_alpha=float(o["lora_alpha"]),
                reward=getattr(reward_model, "name", type(reward_model).__name__),
                eval_every=int(o["eval_every"]),
                eval_seeds=(0,),
                eval_rewards=(reward_name(eval_reward),) if eval_reward is not None else (),
                save_every=int(o["save_every"]),
                grad_checkpointing=bool(o["gradient_checkpointing"]),
                dtype="bfloat16" if o["bf16_autocast"] else "float32",
                offload_reward=bool(o["offload_reward"]),
                sde_window=int(o["sde_window"]),
                sde_window_schedule=str(o["sde_window_schedule"]),
                uncond_grad=bool(o["uncond_grad"]),
                reward_timeout_s=float(o["reward_timeout_s"]) or None,
            )
        except ValueError as e:
            raise bridge.NodeInputError(f"{node}: {e}") from None
        if resume_ckpt:
            try:
                check_resumable(config, resume_ckpt)
            except (ValueError, FileNotFoundError) as e:
                raise bridge.input_error(node, "resume_job", f"{resume_job}: {e} (use the same settings)") from None
        samples = bridge.model_latent(model, latent_image["samples"], node)  # (B, 16, 1, H, W) for Qwen-Image
        from densegrpo_core.jobs.manager import settings_key

        key = settings_key(
            {
                "config": dataclasses.asdict(config),
                "prompts": prompt_list,
                "negative": negative_prompt,
                "guidance": float(guidance),
                "name": name,
                "resume": resume_job,
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
        if o["free_cached_models"]:
            import comfy.model_management

            comfy.model_management.unload_all_models()
            comfy.model_management.soft_empty_cache()
        est = check_memory(model, config, samples.shape[1:], context_tokens, o["allow_over_memory"], node, targets)
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
                eval_prompts=prompt_list[:4] if int(o["eval_every"]) else (),
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
            resume_of=resume_job or None,
            start_iteration=manager.get(resume_job).iteration if resume_ckpt else 0,
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
            + (f", resuming {resume_job}" if resume_ckpt else "")
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
        text = status_text(d) + (f"\n{j.meta['targets_note']}" if j.meta.get("targets_note") else "")
        images, ui = [], []
        for name in JOB_FILES:
            path = os.path.join(j.folder, name)
            if os.path.isfile(path):
                with Image.open(path) as im:
                    images.append(pil_to_tensor(im))
                ui.append(self.preview(path, f"{j.id}_{name}"))
        if not images:  # nothing drawn yet: a readable card instead of an empty or black preview
            card = placeholder_card(j.id, d["state"])
            images.append(pil_to_tensor(card))
            ui.append(self.preview_image(card, f"{j.id}_starting.png"))
        h = max(i.shape[0] for i in images)
        plots = torch.cat(
            [torch.nn.functional.pad(i, (0, 0, 0, 0, 0, h - i.shape[0]), value=1.0) for i in images], dim=1
        )[None]
        return {"ui": {"text": [text], "images": ui}, "result": (text, plots)}

    @staticmethod
    def preview_image(image, name: str) -> dict:
        """Save a PIL image into ComfyUI's temp folder and describe it for the node's image preview."""
        import folder_paths

        folder = folder_paths.get_temp_directory()
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, name))
        return {"filename": name, "subfolder": "", "type": "temp"}

    @staticmethod
    def preview(path: str, name: str) -> dict:
        """Copy a plot into ComfyUI's temp folder and describe it for the node's image preview."""
        import shutil

        import folder_paths

        folder = folder_paths.get_temp_directory()
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, name))
        return {"filename": name, "subfolder": "", "type": "temp"}


ABSENT = "—"  # a value a job does not have yet


def status_text(d: dict) -> str:
    """The Status node's text from a job's to_dict(): every field always shown, "—" for a value not there yet."""
    last = d.get("last_metric") or {}
    reward = last.get("reward_mean")
    per, eta = d.get("sec_per_iteration"), d.get("eta_s")
    fields = [
        f"iteration {d['iteration']}/{d['total']}",
        f"reward {reward:.4f}" if isinstance(reward, (int, float)) else f"reward {ABSENT}",
        f"{per:.2f} s/it" if per else f"s/it {ABSENT}",
    ]
    if d["state"] in ("queued", "running"):
        fields.append(f"ETA {format_duration(eta)}" if eta is not None else f"ETA {ABSENT}")
    loras = d.get("loras") or []
    return (
        f"job {d['id']} [{d['state']}] {d['name']}: "
        + " · ".join(fields)
        + f"\nlatest LoRA: {os.path.basename(loras[-1]) if loras else ABSENT}"
        + (f"\nerror: {d['error']}" if d.get("error") else "")
    )


def placeholder_card(job_id: str, state: str, size: tuple[int, int] = (640, 220)):
    """A light PIL image saying why there is nothing to show yet (for the Status node's preview and output)."""
    from PIL import Image, ImageDraw, ImageFont

    if state in ("queued", "running"):
        lines = ["job starting", "live in the DenseGRPO panel", f"job {job_id}: plots appear here after iteration 1"]
    else:
        lines = [f"job {state}", "no plots were drawn", f"job {job_id}: see the DenseGRPO panel"]
    image = Image.new("RGB", size, (238, 240, 244))
    draw = ImageDraw.Draw(image)

    def font(px: int, line: str):
        try:  # Pillow's own FreeType font; shrunk until the line fits
            while px > 10 and draw.textlength(line, font=ImageFont.load_default(size=px)) > size[0] - 40:
                px -= 2
            return ImageFont.load_default(size=px)
        except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font
            return ImageFont.load_default()

    fonts = [font(px, line) for px, line in zip((34, 26, 18), lines)]
    heights = [draw.textbbox((0, 0), line, font=f)[3] for line, f in zip(lines, fonts)]
    gap = 14
    y = (size[1] - sum(heights) - gap * (len(lines) - 1)) // 2
    for line, f, h, color in zip(lines, fonts, heights, [(24, 28, 34), (40, 90, 170), (96, 102, 112)]):
        draw.text(((size[0] - draw.textlength(line, font=f)) / 2, y), line, fill=color, font=f)
        y += h + gap
    return image


class StopTraining(JobNode):
    DESCRIPTION = "Ask a DenseGRPO training job to stop: it finishes the current iteration, saves the LoRA and exits."
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("status",)
    OUTPUT_TOOLTIPS = ("the job's state after the request",)

    def execute(self, job=None, job_id=""):
        j = get_manager().stop(find_job(job, job_id, "DenseGRPO Stop Training").id)
        text = f"job {j.id}: {j.state.value}"
        return {"ui": {"text": [text]}, "result": (text,)}


class TrainingOptions:
    DESCRIPTION = (
        "The DenseGRPO Train LoRA node's other settings (KL weight, save interval, seed, LoRA rank, batch sizes, "
        "memory switches, SDE window, evaluations, resume). Connect its output to the Train node's `options` "
        "input; without it the Train node uses these defaults."
    )
    CATEGORY = "DenseGRPO/training"
    FUNCTION = "execute"
    RETURN_TYPES = (OPTIONS_TYPE,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("connect to the `options` input of DenseGRPO Train LoRA",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": option_inputs()}

    @classmethod
    def VALIDATE_INPUTS(cls, prompts_file=None, resume_job=None):
        """Checked when the prompt is queued, before anything runs."""
        return check_prompts_file(prompts_file, OPTIONS_NODE) or check_resume_job(resume_job, OPTIONS_NODE) or True

    def execute(self, **values):
        return ({**option_defaults(), **values, "type": OPTIONS_TYPE},)


NODES = {
    "DenseGRPO_TrainLoRA": (TrainLoRA, "DenseGRPO Train LoRA (background)"),
    "DenseGRPO_TrainingStatus": (TrainingStatus, "DenseGRPO Training Status"),
    "DenseGRPO_StopTraining": (StopTraining, "DenseGRPO Stop Training"),
    "DenseGRPO_TrainingOptions": (TrainingOptions, OPTIONS_NODE),
}
