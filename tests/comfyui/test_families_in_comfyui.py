"""Every model family trains inside a real ComfyUI (skipped without $COMFYUI_PATH): for a tiny random instance
of ComfyUI's own class of each family (tests/comfyui/test_nodes/tiny_<family>.py), the Train node runs two
iterations with gradients reaching every LoRA layer, the LoRA loads with the stock LoraLoaderModelOnly with no
unloaded key and changes the output, and a prompt on the shared MODEL while the job trains is bit-identical."""

import glob
import importlib.util
import os
import re
import time

import pytest
import torch
from train_prompts import train_nodes

pytestmark = pytest.mark.comfyui
TEST_NODES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_nodes")


def family_settings() -> dict:
    """family → its tiny module (CFG, LATENT_NODE), read without importing ComfyUI."""
    out = {}
    for path in sorted(glob.glob(os.path.join(TEST_NODES, "tiny_*.py"))):
        name = os.path.basename(path)[len("tiny_") : -len(".py")]
        if name == "families":
            continue
        spec = importlib.util.spec_from_file_location(f"_tiny_settings_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out[name] = module
    return out


FAMILIES = family_settings()


def sample_prompt(family: str, nonce: int, prefix: str, lora: str | None = None) -> dict:
    """The family's tiny MODEL through a passthrough (the same MODEL object, run again), Euler, saved latent."""
    settings = FAMILIES[family]
    p = {
        "tiny": {"class_type": "DenseGRPOTest_TinyFamily", "inputs": {"family": family}},
        "pass": {"class_type": "DenseGRPOTest_Passthrough", "inputs": {"model": ["tiny", 0], "nonce": nonce}},
    }
    model = ["pass", 0]
    if lora:
        p["lora"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0},
        }
        model = ["lora", 0]
    p.update(
        {
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["tiny", 1], "text": "a red cube"}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["tiny", 1], "text": ""}},
            "latent": {
                "class_type": settings.LATENT_NODE,
                "inputs": {"width": 64, "height": 64, "batch_size": 2},
            },
            "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sigmas": {
                "class_type": "BasicScheduler",
                "inputs": {"model": model, "scheduler": "normal", "steps": 4, "denoise": 1.0},
            },
            "sample": {
                "class_type": "SamplerCustom",
                "inputs": {
                    "model": model,
                    "add_noise": True,
                    "noise_seed": 11,
                    "cfg": settings.CFG,
                    "positive": ["pos", 0],
                    "negative": ["neg", 0],
                    "sampler": ["sampler", 0],
                    "sigmas": ["sigmas", 0],
                    "latent_image": ["latent", 0],
                },
            },
            "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": prefix}},
        }
    )
    return p


def train_prompt(family: str, name: str) -> dict:
    settings = FAMILIES[family]
    return {
        "tiny": {"class_type": "DenseGRPOTest_TinyFamily", "inputs": {"family": family}},
        "reward": {"class_type": "DenseGRPO_LoadJPEGCompressibility", "inputs": {"device": "cpu"}},
        "psi": {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}},
        "latent": {"class_type": settings.LATENT_NODE, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        **train_nodes(
            {
                "model": ["tiny", 0],
                "clip": ["tiny", 1],
                "vae": ["tiny", 2],
                "reward_model": ["reward", 0],
                "psi": ["psi", 0],
                "prompts": "a red cube\na blue ball",
                "negative_prompt": "",
                "latent_image": ["latent", 0],
                "lora_name": name,
                "iterations": 100000,
                "group_size": 2,
                "steps": 3,
                "cfg": settings.CFG,
                "scheduler": "normal",
                "advantage_mode": "dense_grpo",
                "learning_rate": 1e-2,
                "beta": 0.01,
                "save_every": 1,
                "seed": 0,
                "prompts_per_iteration": 1,
                "lora_rank": 4,
                "lora_alpha": 4.0,
                "train_batch": 2,
            }
        ),
    }


def latent(comfy, prefix):
    from safetensors.torch import load_file

    return load_file(sorted(glob.glob(os.path.join(comfy.output_dir, f"{prefix}_*.latent")))[-1])["latent_tensor"]


def job(comfy, job_id):
    return comfy.get(f"/densegrpo/jobs/{job_id}")


def wait_for(comfy, job_id, predicate, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = job(comfy, job_id)
        if predicate(j) or j["state"] == "failed":
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach the condition in {timeout}s: {job(comfy, job_id)}")


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(comfy, request):
    """One family's training job: a sample prompt before it, two iterations, a sample prompt while it runs,
    then stop over HTTP."""
    family = request.param
    comfy.run(sample_prompt(family, 1, f"{family}_before"))
    entry = comfy.run(train_prompt(family, f"fam_{family}"))
    text = " ".join(entry["outputs"]["train"]["text"])
    job_id = re.search(r"job ([a-z0-9]{12})", text).group(1)
    running = wait_for(comfy, job_id, lambda j: j["state"] == "running" and j["iteration"] >= 2)
    comfy.run(sample_prompt(family, 2, f"{family}_during"))
    during_state = job(comfy, job_id)["state"]
    comfy.post(f"/densegrpo/jobs/{job_id}/stop")
    final = wait_for(comfy, job_id, lambda j: j["state"] in ("stopped", "failed", "finished"))
    return {"family": family, "status": text, "running": running, "during_state": during_state, "final": final}


def lora_path(comfy, family):
    return os.path.join(comfy.models_dir, "loras", "densegrpo", f"fam_{family}_latest.safetensors")


def test_the_train_node_runs_two_iterations_of_the_family(trained):
    assert trained["running"]["state"] == "running", trained["running"]
    assert trained["final"]["state"] == "stopped", trained["final"]
    assert trained["final"]["iteration"] >= 2 and trained["final"]["loras"]


def test_gradients_reach_every_lora_layer(comfy, trained):
    """LoRA ups start at zero: a nonzero up is a layer the policy gradient reached."""
    from safetensors.torch import load_file

    sd = load_file(lora_path(comfy, trained["family"]))
    ups = {k: v for k, v in sd.items() if k.endswith(".lora_up.weight")}
    assert ups
    assert [k for k, v in ups.items() if not v.abs().sum() > 0] == []


def test_the_stock_lora_loader_loads_every_key_and_changes_the_output(comfy, trained):
    family = trained["family"]
    before_log = len(comfy.log())
    comfy.run(sample_prompt(family, 3, f"{family}_with_lora", lora=f"densegrpo/fam_{family}_latest.safetensors"))
    assert "lora key not loaded" not in comfy.log()[before_log:]
    assert not torch.equal(latent(comfy, f"{family}_with_lora"), latent(comfy, f"{family}_before"))


def test_a_prompt_on_the_shared_model_during_training_is_bit_identical(comfy, trained):
    family = trained["family"]
    assert trained["during_state"] == "running"
    assert torch.equal(latent(comfy, f"{family}_before"), latent(comfy, f"{family}_during"))
    comfy.run(sample_prompt(family, 4, f"{family}_after"))
    assert torch.equal(latent(comfy, f"{family}_before"), latent(comfy, f"{family}_after"))
