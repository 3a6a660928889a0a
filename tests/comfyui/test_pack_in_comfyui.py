"""The pack inside a real ComfyUI (skipped without $COMFYUI_PATH): registration, tooltips, the SDE sampler,
the visualizer, calibration, errors, and the example workflows on a tiny SD3 model built from ComfyUI's
own MMDiT class."""

import glob
import json
import os
import sys

import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from workflow_format import to_api  # noqa: E402

pytestmark = pytest.mark.comfyui


# ------------------------------------------------------------------ prompt building blocks
def tiny_model(prompt, node_id="model"):
    prompt[node_id] = {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"},
    }
    return [node_id, 0]


def conditioning(prompt, text, node_id):
    prompt[node_id] = {"class_type": "DenseGRPOTest_SD3Conditioning", "inputs": {"text": text, "seed": 0}}
    return [node_id, 0]


def empty_latent(prompt, batch=1, node_id="latent"):
    prompt[node_id] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}}
    return [node_id, 0]


def tiny_vae(prompt, node_id="vae"):
    prompt[node_id] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}}
    return [node_id, 0]


def jpeg_reward(prompt, node_id="reward"):
    prompt[node_id] = {"class_type": "DenseGRPO_LoadJPEGCompressibility", "inputs": {"device": "cpu"}}
    return [node_id, 0]


def sampling_prompt(sampler_node: dict, prefix: str, steps=4, seed=7, model=None) -> dict:
    """SamplerCustom with the given SAMPLER node, BasicScheduler(normal), saving the latent."""
    p = {}
    m = model(p) if model else tiny_model(p)
    p["sampler"] = sampler_node
    p["sigmas"] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": m, "scheduler": "normal", "steps": steps, "denoise": 1.0},
    }
    p["sample"] = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": m,
            "add_noise": True,
            "noise_seed": seed,
            "cfg": 2.0,
            "positive": conditioning(p, "a red cube", "pos"),
            "negative": conditioning(p, "", "neg"),
            "sampler": ["sampler", 0],
            "sigmas": ["sigmas", 0],
            "latent_image": empty_latent(p, batch=2),
        },
    }
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}}
    return p


def saved_latent(comfy, prefix: str) -> torch.Tensor:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(comfy.output_dir, f"{prefix}_*.latent")))
    assert files, f"no latent saved with prefix {prefix}"
    return load_file(files[-1])["latent_tensor"]


def run(comfy, prompt, timeout=300):
    return comfy.wait(comfy.queue(prompt), timeout)


def error_of(comfy, prompt, timeout=300) -> str:
    with pytest.raises(Exception) as info:
        run(comfy, prompt, timeout)
    return str(info.value)


# ------------------------------------------------------------------ registration
def test_pack_loads_without_import_errors(comfy):
    failed = [line for line in comfy.log().splitlines() if "IMPORT FAILED" in line and "DenseGRPO" in line]
    assert not failed, failed


def test_object_info_lists_every_node_with_tooltips_on_every_input_and_output(comfy):
    info = comfy.object_info()
    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id in info, node_id
        node = info[node_id]
        assert node["category"].startswith("DenseGRPO/") and node["display_name"]
        for group in ("required", "optional"):
            for name, spec in node["input"].get(group, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        tips = node.get("output_tooltips") or []
        assert len(tips) == len(node["output"]) and all(tips), f"{node_id} outputs lack tooltips"


# ------------------------------------------------------------------ SDE sampler
def test_sde_sampler_with_psi_zero_equals_stock_euler_bit_for_bit(comfy):
    stock = sampling_prompt({"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}, "stock_euler")
    run(comfy, stock)
    ours = sampling_prompt({"class_type": "DenseGRPO_SDESampler", "inputs": {"psi": ["psi", 0], "seed": 3}}, "sde_psi0")
    ours["psi"] = {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.0}}
    run(comfy, ours)
    assert torch.equal(saved_latent(comfy, "stock_euler"), saved_latent(comfy, "sde_psi0"))


def test_sde_sampler_with_psi_differs_from_euler_and_follows_its_seed(comfy):
    for name, seed in (("sde_a", 1), ("sde_c", 2)):
        p = sampling_prompt({"class_type": "DenseGRPO_SDESampler", "inputs": {"psi": ["psi", 0], "seed": seed}}, name)
        p["psi"] = {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}}
        run(comfy, p)
    run(comfy, sampling_prompt({"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}, "euler_ref"))
    a, c, euler = (saved_latent(comfy, n) for n in ("sde_a", "sde_c", "euler_ref"))
    assert not torch.equal(a, c) and not torch.allclose(a, euler)


def test_ksampler_sde_node_samples_and_reports_its_trajectory(comfy):
    p = {}
    m = tiny_model(p)
    p["psi"] = {"class_type": "DenseGRPO_PsiFromList", "inputs": {"values": "0.7, 0.6, 0.5"}}
    p["ks"] = {
        "class_type": "DenseGRPO_KSamplerSDE",
        "inputs": {
            "model": m,
            "positive": conditioning(p, "a cube", "pos"),
            "negative": conditioning(p, "", "neg"),
            "latent_image": empty_latent(p),
            "seed": 0,
            "steps": 3,
            "cfg": 2.0,
            "scheduler": "normal",
            "psi": ["psi", 0],
        },
    }
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "ksde"}}
    run(comfy, p)
    assert saved_latent(comfy, "ksde").shape == (1, 16, 8, 8)


# ------------------------------------------------------------------ errors
def test_a_non_flow_model_gives_a_clear_error(comfy):
    p = {}
    tiny_model(p, "unet")
    p["eps"] = {
        "class_type": "ModelSamplingDiscrete",
        "inputs": {"model": ["unet", 0], "sampling": "eps", "zsnr": False},
    }
    p["psi"] = {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}}
    p["ks"] = {
        "class_type": "DenseGRPO_KSamplerSDE",
        "inputs": {
            "model": ["eps", 0],
            "positive": conditioning(p, "a", "pos"),
            "negative": conditioning(p, "", "neg"),
            "latent_image": empty_latent(p),
            "seed": 0,
            "steps": 3,
            "cfg": 2.0,
            "scheduler": "normal",
            "psi": ["psi", 0],
        },
    }
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "never"}}
    assert "is not a flow-matching model" in error_of(comfy, p)


def visualizer_prompt(group=2, steps=3, psi="0.7, 0.7, 0.7", prompt_text="a red cube", channels_latent=None):
    p = {}
    m = tiny_model(p)
    p["psi"] = {"class_type": "DenseGRPO_PsiFromList", "inputs": {"values": psi}}
    latent = channels_latent(p) if channels_latent else empty_latent(p)
    p["viz"] = {
        "class_type": "DenseGRPO_DenseRewardVisualizer",
        "inputs": {
            "model": m,
            "positive": conditioning(p, "a red cube", "pos"),
            "negative": conditioning(p, "", "neg"),
            "vae": tiny_vae(p),
            "reward_model": jpeg_reward(p),
            "prompt": prompt_text,
            "latent_image": latent,
            "steps": steps,
            "cfg": 2.0,
            "scheduler": "normal",
            "psi": ["psi", 0],
            "group_size": group,
            "seed": 0,
        },
    }
    p["plot"] = {"class_type": "SaveImage", "inputs": {"images": ["viz", 0], "filename_prefix": "viz_plot"}}
    p["grid"] = {"class_type": "SaveImage", "inputs": {"images": ["viz", 1], "filename_prefix": "viz_grid"}}
    return p


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(psi="0.7, 0.7"), "input 'psi'"),
        (dict(group=1), "group_size"),
        (dict(prompt_text="   "), "input 'prompt' is empty"),
        (
            dict(
                channels_latent=lambda p: (
                    p.__setitem__(
                        "sd", {"class_type": "DenseGRPOTest_RandomLatent", "inputs": {"channels": 4, "size": 8}}
                    ),
                    ["sd", 0],
                )[1]
            ),
            "has 4 channels but this model's latents have 16",
        ),
    ],
)
def test_visualizer_bad_inputs_give_clear_node_errors(comfy, change, message):
    text = error_of(comfy, visualizer_prompt(**change))
    assert message is None or message in text, text
    assert "DenseGRPO" in text or "group_size" in text


def test_visualizer_draws_dense_rewards_and_the_ode_grid(comfy):
    run(comfy, visualizer_prompt(group=3, steps=3))
    from PIL import Image

    plot = sorted(glob.glob(os.path.join(comfy.output_dir, "viz_plot_*.png")))[-1]
    grid = sorted(glob.glob(os.path.join(comfy.output_dir, "viz_grid_*.png")))[-1]
    with Image.open(plot) as im:
        assert im.width > 300 and im.height > 300
    with Image.open(grid) as im:  # 3 rows (trajectories) x 4 columns (T + 1 endpoints)
        assert im.width > im.height


# ------------------------------------------------------------------ example workflows
def load_workflow(comfy, name):
    with open(os.path.join(ROOT, "workflows", name + ".json")) as f:
        return to_api(json.load(f), comfy.object_info())


def make_tiny(prompt: dict, small: dict) -> dict:
    """Swap the checkpoint loader for the tiny SD3 model, test text encoder and tiny VAE; pickscore for JPEG;
    shrink sizes and settings (`small`: {input name: value} applied wherever the input exists)."""
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "CheckpointLoaderSimple":
            prompt[node_id + "m"] = {
                "class_type": "UNETLoader",
                "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"},
            }
            prompt[node_id + "c"] = {"class_type": "DenseGRPOTest_TinyCLIP", "inputs": {}}
            prompt[node_id + "v"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}}
            del prompt[node_id]
            for other in prompt.values():
                for k, v in other["inputs"].items():
                    if isinstance(v, list) and v[0] == node_id:
                        other["inputs"][k] = [node_id + "mcv"[v[1]], 0]
        elif node["class_type"].startswith("DenseGRPO_LoadPickScore"):
            node["class_type"], node["inputs"] = "DenseGRPO_LoadJPEGCompressibility", {"device": "cpu"}
    for node in prompt.values():
        if node["class_type"] in ("EmptySD3LatentImage",):
            node["inputs"].update(width=64, height=64)
        for k, v in small.items():
            if k in node["inputs"] and not isinstance(node["inputs"][k], list):
                node["inputs"][k] = v
    return prompt


def test_example_workflows_use_only_installed_nodes(comfy):
    names = [os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "workflows", "*.json"))]
    assert len(names) >= 4
    for name in names:
        load_workflow(comfy, name)  # KeyError names a missing node type
    templates = comfy.get("/workflow_templates")  # ComfyUI's template browser finds them
    assert sorted(set(templates.get("ComfyUI-DenseGRPO", []))) == sorted(names), templates


def test_example_workflow_sample_with_psi_runs(comfy):
    run(comfy, make_tiny(load_workflow(comfy, "densegrpo_sd35_sample_with_psi"), {"steps": 4}))
    assert glob.glob(os.path.join(comfy.output_dir, "densegrpo_sde_*.png"))


def test_example_workflow_visualize_dense_rewards_runs(comfy):
    run(comfy, make_tiny(load_workflow(comfy, "densegrpo_visualize_dense_rewards"), {"steps": 3, "group_size": 2}))
    assert glob.glob(os.path.join(comfy.output_dir, "densegrpo_dense_rewards_*.png"))
    assert glob.glob(os.path.join(comfy.output_dir, "densegrpo_ode_grid_*.png"))


def test_example_workflow_calibrate_saves_psi_where_the_loader_finds_it(comfy):
    run(
        comfy,
        make_tiny(
            load_workflow(comfy, "densegrpo_calibrate_psi"),
            {"steps": 3, "group_size": 3, "iterations": 3, "prompts_per_iteration": 1, "save_name": "tiny_calibration"},
        ),
    )
    path = os.path.join(comfy.output_dir, "densegrpo", "psi", "tiny_calibration.json")
    psi = json.load(open(path))
    assert len(psi["psi"]) == 3 and len(psi["history"]) == 3
    assert "tiny_calibration.json" in comfy.object_info()["DenseGRPO_PsiLoad"]["input"]["required"]["psi_file"][0]
    assert glob.glob(os.path.join(comfy.output_dir, "densegrpo_psi_calibration_*.png"))


def test_cancel_button_interrupts_a_long_calibration(comfy):
    import time

    from harness import ComfyError

    p = {}
    p["model"] = {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"},
    }
    p["clip"] = {"class_type": "DenseGRPOTest_TinyCLIP", "inputs": {}}
    p["psi"] = {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}}
    p["cal"] = {
        "class_type": "DenseGRPO_CalibratePsi",
        "inputs": {
            "model": ["model", 0],
            "clip": ["clip", 0],
            "vae": tiny_vae(p),
            "reward_model": jpeg_reward(p),
            "prompts": "a cube",
            "negative_prompt": "",
            "latent_image": empty_latent(p),
            "steps": 3,
            "cfg": 2.0,
            "scheduler": "normal",
            "psi_init": ["psi", 0],
            "iterations": 1000,
            "prompts_per_iteration": 1,
            "group_size": 2,
            "criterion": "relative",
            "eps2": 0.01,
            "seed": 0,
            "save_name": "never_saved",
        },
    }
    prompt_id = comfy.queue(p)
    time.sleep(3)
    t0 = time.time()
    comfy.post("/interrupt")
    with pytest.raises(ComfyError, match="interrupted"):
        comfy.wait(prompt_id, timeout=60)
    assert time.time() - t0 < 30
    assert not os.path.exists(os.path.join(comfy.output_dir, "densegrpo", "psi", "never_saved.json"))
