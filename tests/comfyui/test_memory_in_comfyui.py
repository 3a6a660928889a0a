"""Device memory of a training job inside a real ComfyUI (skipped without $COMFYUI_PATH): the
trained model's weights are held once (ComfyUI's own copy offloaded while the job holds its copy), the job's
memory is reserved from ComfyUI's model management and released when it ends, prompts on the MODEL stay
bit-identical, a Cancel does not reach the job, and an fp8 model trains a LoRA the stock loader applies."""

import json
import os
import re

import pytest
import torch
from test_training_in_comfyui import job, job_id_of, latent, sample_prompt, train_prompt, wait_for
from train_prompts import set_train

pytestmark = pytest.mark.comfyui
TERMINAL = ("finished", "failed", "stopped")


def memory_state(comfy, weight_dtype="default") -> dict:
    """ComfyUI's loaded models and reserved memory, in a prompt that keeps the tiny SD3 loader's cached MODEL
    (the object the sample and train prompts use) alive without loading it."""
    entry = comfy.run(
        {
            "unet": {
                "class_type": "UNETLoader",
                "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": weight_dtype},
            },
            "mem": {"class_type": "DenseGRPOTest_MemoryState", "inputs": {"model": ["unet", 0]}},
        }
    )
    return json.loads(entry["outputs"]["mem"]["text"][0])


def sd3_entries(state: dict) -> list[dict]:
    """The loaded entries of the tiny SD3 the job trains (other tests' tiny SD3 models may be loaded too)."""
    return [m for m in state["loaded"] if m["class"] == "SD3" and m["is_input"]]


@pytest.fixture(scope="module")
def memory_job(comfy):
    """A job observed through ComfyUI's model management: before, while it trains, after a Cancel, after it stops."""
    comfy.run(sample_prompt(101, "mem_before"))
    loaded = memory_state(comfy)
    entry = comfy.run(train_prompt("mem", iterations=100000))
    job_id = job_id_of(entry)
    wait_for(comfy, job_id, lambda j: j["state"] == "running" and j["iteration"] >= 1)
    during = memory_state(comfy)
    reserved = comfy.get(f"/densegrpo/jobs/{job_id}?full=1")["latest"]["memory"]["reserved_bytes"]
    comfy.run(sample_prompt(102, "mem_during"))
    comfy.post("/interrupt")
    at_cancel = job(comfy, job_id)["iteration"]
    after_cancel = wait_for(comfy, job_id, lambda j: j["iteration"] >= at_cancel + 2 or j["state"] in TERMINAL)
    comfy.post(f"/densegrpo/jobs/{job_id}/stop")
    final = wait_for(comfy, job_id, lambda j: j["state"] in TERMINAL)
    return {
        "loaded": loaded,
        "during": during,
        "reserved": reserved,
        "after_cancel": after_cancel,
        "final": final,
        "after": memory_state(comfy),
        "status": " ".join(entry["outputs"]["train"]["text"]),
    }


def test_comfyuis_copy_of_the_trained_model_leaves_the_loaded_list_while_the_job_holds_the_weights(memory_job):
    assert sd3_entries(memory_job["loaded"]), "the sample prompt loaded the tiny SD3"
    assert sd3_entries(memory_job["during"]) == []


def test_the_jobs_estimated_memory_is_reserved_from_comfyui_while_it_trains(memory_job):
    assert memory_job["reserved"] > 0
    assert memory_job["during"]["extra_reserved"] == memory_job["loaded"]["extra_reserved"] + memory_job["reserved"]


def test_the_reservation_is_released_when_the_job_stops(memory_job):
    assert memory_job["final"]["state"] == "stopped", memory_job["final"]
    assert memory_job["after"]["extra_reserved"] == memory_job["loaded"]["extra_reserved"]


def test_a_prompt_during_training_reloads_comfyuis_copy_and_is_bit_identical(comfy, memory_job):
    assert torch.equal(latent(comfy, "mem_before"), latent(comfy, "mem_during"))


def test_a_cancel_in_comfyui_does_not_reach_the_training_job(memory_job):
    assert memory_job["after_cancel"]["state"] == "running", memory_job["after_cancel"]


def fp8_train_prompt(name: str) -> dict:
    p = train_prompt(name, iterations=2)
    p["unet"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    return p


@pytest.fixture(scope="module")
def fp8_job(comfy):
    entry = comfy.run(fp8_train_prompt("fp8"))
    final = wait_for(comfy, job_id_of(entry), lambda j: j["state"] in TERMINAL)
    return {"final": final, "status": " ".join(entry["outputs"]["train"]["text"])}


def test_a_model_loaded_with_fp8_weights_trains_with_its_base_kept_in_fp8(fp8_job):
    assert fp8_job["final"]["state"] == "finished", fp8_job["final"]
    assert re.search(r"base weights float8_e4m3fn, computed in float32 per layer", fp8_job["status"]), fp8_job["status"]


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "default"])
def test_the_lora_trained_on_fp8_loads_on_the_fp8_and_the_full_precision_model(comfy, fp8_job, weight_dtype):
    prefix, plain_prefix = f"fp8lora_on_{weight_dtype}", f"nolora_on_{weight_dtype}"
    plain = sample_prompt(103, plain_prefix)
    p = sample_prompt(103, prefix, lora="densegrpo/fp8_latest.safetensors")
    for prompt in (plain, p):
        prompt["unet"]["inputs"]["weight_dtype"] = weight_dtype
    comfy.run(plain)
    before_log = len(comfy.log())
    comfy.run(p)
    assert "lora key not loaded" not in comfy.log()[before_log:]
    assert not torch.equal(latent(comfy, prefix), latent(comfy, plain_prefix))


def test_a_run_that_cannot_fit_is_refused_naming_the_settings_that_would_fit(comfy):
    from harness import ComfyError

    p = train_prompt("too_big_options", iterations=10)
    p["latent"]["inputs"].update(width=1024, height=1024)  # rollout chunks of 1280 rows: ~26 GiB
    set_train(p, group_size=32, steps=20, lora_name="too_big_options", max_batch=4096)
    with pytest.raises(ComfyError, match=r"it would fit with .*max_batch \d+ \(~[\d.]+ GiB\)"):
        comfy.run(p)
    assert not os.path.exists(
        os.path.join(comfy.models_dir, "loras", "densegrpo", "too_big_options_latest.safetensors")
    )
