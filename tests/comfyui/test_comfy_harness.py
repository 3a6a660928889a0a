"""The harness itself: a real ComfyUI runs the stock pipeline on the tiny SD3 model and loads our pack."""

import glob
import json
import os

import pytest

pytestmark = pytest.mark.comfyui


def stock_prompt(prefix, text="a red cube", seed=7, steps=4, cfg=2.0, model_node=None):
    p = {
        "unet": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"},
        },
        "pos": {"class_type": "DenseGRPOTest_SD3Conditioning", "inputs": {"text": text, "seed": 0}},
        "neg": {"class_type": "DenseGRPOTest_EmptyConditioning", "inputs": {}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["unet", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "denoise": 1.0,
            },
        },
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
    if model_node:
        p["model2"] = model_node
        p["ks"]["inputs"]["model"] = ["model2", 0]
    return p


def describe(comfy, model_ref_nodes: dict) -> dict:
    p = dict(model_ref_nodes)
    p["describe"] = {"class_type": "DenseGRPOTest_DescribeModel", "inputs": {"model": ["m", 0]}}
    entry = comfy.run(p, timeout=120)
    return json.loads(entry["outputs"]["describe"]["text"][0])


def test_stock_sd3_pipeline_writes_a_png(comfy):
    entry = comfy.run(stock_prompt("harness_stock"), timeout=300)
    images = entry["outputs"]["save"]["images"]
    assert len(images) == 1 and images[0]["filename"].startswith("harness_stock")
    path = os.path.join(comfy.output_dir, images[0]["subfolder"], images[0]["filename"])
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (64, 64)
    assert glob.glob(os.path.join(comfy.output_dir, "harness_stock_*.png"))


def test_both_packs_load_without_import_failure(comfy):
    log = comfy.log()
    for pack in ("ComfyUI-DenseGRPO", "densegrpo_test_nodes"):
        failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and pack in line]
        assert not failed, f"{failed}\n{log[-6000:]}"
        assert any(pack in line and "seconds" in line for line in log.splitlines()), f"{pack} not in the import times"
    info = comfy.object_info()
    for node in (
        "DenseGRPOTest_SD3Conditioning",
        "DenseGRPOTest_EmptyConditioning",
        "DenseGRPOTest_TinyCLIP",
        "DenseGRPOTest_DescribeModel",
    ):
        assert node in info, node
    assert "taesd3" in info["VAELoader"]["input"]["required"]["vae_name"][0]
    assert "tiny_sd3.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]


def test_tiny_model_is_detected_as_sd3_flow_and_eps_patch_is_not_flow(comfy):
    unet = {
        "m": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}}
    }
    flow = describe(comfy, unet)
    assert flow["model_class"] == "SD3" and flow["is_flow"] and flow["shift"] == 3.0, flow
    assert flow["latent_channels"] == 16
    eps = describe(
        comfy,
        {
            "u": unet["m"],
            "m": {
                "class_type": "ModelSamplingDiscrete",
                "inputs": {"model": ["u", 0], "sampling": "eps", "zsnr": False},
            },
        },
    )
    assert not eps["is_flow"] and "EPS" in eps["model_sampling_mro"], eps


def test_eps_patched_tiny_model_still_samples_with_stock_nodes(comfy):
    node = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["unet", 0], "sampling": "eps", "zsnr": False}}
    comfy.run(stock_prompt("harness_eps", steps=2, model_node=node), timeout=300)
    assert glob.glob(os.path.join(comfy.output_dir, "harness_eps_*.png"))


def test_clip_stand_in_works_with_clip_text_encode_and_conds_depend_on_text(comfy):
    p = stock_prompt("harness_clip_a", text="unused")
    p["clip"] = {"class_type": "DenseGRPOTest_TinyCLIP", "inputs": {}}
    p["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["clip", 0]}}
    p["lat_save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "harness_clip_a"}}
    comfy.run(p)
    p["pos"]["inputs"]["text"] = "a blue sphere"
    p["lat_save"]["inputs"]["filename_prefix"] = p["save"]["inputs"]["filename_prefix"] = "harness_clip_b"
    comfy.run(p)
    from safetensors.torch import load_file

    # SaveLatent writes output/<prefix>_00001_.latent (its default prefix "latents/ComfyUI" has the subfolder)
    a, b = (
        load_file(glob.glob(os.path.join(comfy.output_dir, f"harness_clip_{s}_*.latent"))[0])["latent_tensor"]
        for s in "ab"
    )
    assert a.shape == (1, 16, 8, 8) and not (a == b).all()


def test_errors_carry_the_node_message(comfy):
    from harness import ComfyError

    p = stock_prompt("never")
    p["unet"]["inputs"]["unet_name"] = "missing.safetensors"  # refused at validation
    with pytest.raises(ComfyError, match="unet_name"):
        comfy.queue(p)
    with pytest.raises(ComfyError, match=r"DenseGRPOTest_Fail \(node boom\) failed: ValueError: clear text"):
        comfy.run({"boom": {"class_type": "DenseGRPOTest_Fail", "inputs": {"message": "clear text"}}})
