"""Write the example workflows in workflows/ (ComfyUI UI format) from compact descriptions.

    python tools/make_workflows.py http://127.0.0.1:8188   # a running ComfyUI with this pack installed

Model and reward file names are placeholders the user changes in ComfyUI.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workflow_format import build  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"
PROMPT = "a photo of a red fox sitting in a snowy forest, golden hour"
NEGATIVE = ""
TRAIN_SIZE = (360, 424)  # the compact Train node; its settings on a Training Options node below it
OPTIONS_SIZE = (360, 540)
TRAIN_PROMPTS = "\n".join(
    [
        "a photo of a red fox sitting in a snowy forest",
        "a watercolor painting of a lighthouse",
        "a bowl of ramen on a wooden table, studio light",
        "a corgi wearing sunglasses on a beach",
    ]
)


def base(latent_size=1024):
    """Checkpoint (MODEL, CLIP, VAE) + positive/negative prompts + an empty SD3 latent: ids 1-4."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CKPT}, "pos": (40, 120)},
        {"id": 2, "type": "CLIPTextEncode", "widgets": {"text": PROMPT}, "links": {"clip": (1, 1)}, "pos": (420, 60)},
        {
            "id": 3,
            "type": "CLIPTextEncode",
            "widgets": {"text": NEGATIVE},
            "links": {"clip": (1, 1)},
            "pos": (420, 300),
        },
        {
            "id": 4,
            "type": "EmptySD3LatentImage",
            "widgets": {"width": latent_size, "height": latent_size, "batch_size": 1},
            "pos": (420, 520),
        },
    ]


def reward(node_id=5, pos=(40, 480)):
    return {
        "id": node_id,
        "type": "DenseGRPO_LoadPickScore",
        "widgets": {"path": "pickscore", "device": "auto"},
        "pos": pos,
    }


WORKFLOWS = {
    "densegrpo_sd35_sample_with_psi": base()
    + [
        {"id": 10, "type": "DenseGRPO_PsiUniform", "widgets": {"a": 0.7}, "pos": (800, 40)},
        {
            "id": 11,
            "type": "DenseGRPO_SDESampler",
            "widgets": {"seed": 0},
            "links": {"psi": (10, 0)},
            "pos": (800, 160),
        },
        {
            "id": 12,
            "type": "BasicScheduler",
            "widgets": {"scheduler": "normal", "steps": 28, "denoise": 1.0},
            "links": {"model": (1, 0)},
            "pos": (800, 320),
        },
        {
            "id": 13,
            "type": "SamplerCustom",
            "widgets": {"add_noise": True, "noise_seed": 42, "cfg": 4.5},
            "links": {
                "model": (1, 0),
                "positive": (2, 0),
                "negative": (3, 0),
                "sampler": (11, 0),
                "sigmas": (12, 0),
                "latent_image": (4, 0),
            },
            "pos": (1160, 120),
        },
        {"id": 14, "type": "VAEDecode", "links": {"samples": (13, 0), "vae": (1, 2)}, "pos": (1520, 120)},
        {
            "id": 15,
            "type": "SaveImage",
            "widgets": {"filename_prefix": "densegrpo_sde"},
            "links": {"images": (14, 0)},
            "pos": (1760, 120),
        },
    ],
    "densegrpo_visualize_dense_rewards": base(512)
    + [
        reward(),
        {"id": 10, "type": "DenseGRPO_PsiUniform", "widgets": {"a": 0.7}, "pos": (800, 40)},
        {
            "id": 11,
            "type": "DenseGRPO_DenseRewardVisualizer",
            "widgets": {"prompt": PROMPT, "steps": 10, "cfg": 4.5, "scheduler": "normal", "group_size": 8, "seed": 0},
            "links": {
                "model": (1, 0),
                "positive": (2, 0),
                "negative": (3, 0),
                "vae": (1, 2),
                "reward_model": (5, 0),
                "latent_image": (4, 0),
                "psi": (10, 0),
            },
            "pos": (800, 160),
            "size": (340, 420),
        },
        {
            "id": 12,
            "type": "SaveImage",
            "widgets": {"filename_prefix": "densegrpo_dense_rewards"},
            "links": {"images": (11, 0)},
            "pos": (1200, 40),
        },
        {
            "id": 13,
            "type": "SaveImage",
            "widgets": {"filename_prefix": "densegrpo_ode_grid"},
            "links": {"images": (11, 1)},
            "pos": (1200, 420),
        },
    ],
    "densegrpo_calibrate_psi": base(512)[:1]
    + [
        reward(2, (40, 420)),
        {
            "id": 3,
            "type": "EmptySD3LatentImage",
            "widgets": {"width": 512, "height": 512, "batch_size": 1},
            "pos": (40, 600),
        },
        {"id": 10, "type": "DenseGRPO_PsiUniform", "widgets": {"a": 0.7}, "pos": (420, 40)},
        {
            "id": 11,
            "type": "DenseGRPO_CalibratePsi",
            "widgets": {
                "prompts": TRAIN_PROMPTS,
                "steps": 10,
                "cfg": 4.5,
                "scheduler": "normal",
                "iterations": 20,
                "prompts_per_iteration": 2,
                "group_size": 8,
                "criterion": "relative",
                "seed": 0,
                "save_name": "sd35m_pickscore",
            },
            "links": {
                "model": (1, 0),
                "clip": (1, 1),
                "vae": (1, 2),
                "reward_model": (2, 0),
                "latent_image": (3, 0),
                "psi_init": (10, 0),
            },
            "pos": (420, 160),
            "size": (360, 560),
        },
        {
            "id": 12,
            "type": "SaveImage",
            "widgets": {"filename_prefix": "densegrpo_psi_calibration"},
            "links": {"images": (11, 1)},
            "pos": (840, 160),
        },
    ],
    "densegrpo_train_lora": base(512)[:1]
    + [
        reward(2, (40, 420)),
        {
            "id": 3,
            "type": "EmptySD3LatentImage",
            "widgets": {"width": 512, "height": 512, "batch_size": 1},
            "pos": (40, 600),
        },
        {"id": 10, "type": "DenseGRPO_PsiUniform", "widgets": {"a": 0.7}, "pos": (420, 40)},
        {
            "id": 11,
            "type": "DenseGRPO_TrainLoRA",
            "widgets": {
                "prompts": TRAIN_PROMPTS,
                "lora_name": "sd35m_pickscore_densegrpo",
                "iterations": 300,
                "group_size": 8,
                "steps": 10,
                "cfg": 4.5,
                "scheduler": "normal",
                "advantage_mode": "dense_grpo",
                "learning_rate": 3e-4,
            },
            "links": {
                "model": (1, 0),
                "clip": (1, 1),
                "vae": (1, 2),
                "reward_model": (2, 0),
                "psi": (10, 0),
                "latent_image": (3, 0),
                "options": (13, 0),
            },
            "pos": (420, 160),
            "size": TRAIN_SIZE,
        },
        {
            "id": 13,
            "type": "DenseGRPO_TrainingOptions",
            "widgets": {"beta": 0.04, "save_every": 10, "seed": 0},
            "pos": (420, 160 + TRAIN_SIZE[1] + 60),
            "size": OPTIONS_SIZE,
        },
        {
            "id": 12,
            "type": "DenseGRPO_TrainingStatus",
            "links": {"job": (11, 0)},
            "pos": (840, 160),
            "size": (600, 500),
        },
    ],
}


def main(url: str) -> None:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info") as r:
        info = json.load(r)
    os.makedirs(os.path.join(ROOT, "workflows"), exist_ok=True)
    for name, nodes in WORKFLOWS.items():
        path = os.path.join(ROOT, "workflows", name + ".json")
        with open(path, "w") as f:
            json.dump(build(nodes, info), f, indent=1)
        print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
