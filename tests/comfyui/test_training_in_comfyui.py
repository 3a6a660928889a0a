"""Background training inside a real ComfyUI (skipped without $COMFYUI_PATH): the train prompt returns at
once, the shared MODEL is untouched, stop over HTTP, LoRA files that the stock loader applies, resume,
name sanitising, the job routes, the status node."""

import glob
import json
import os
import re
import shutil
import time

import pytest
import torch
from train_prompts import set_train, train_nodes

pytestmark = pytest.mark.comfyui
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sample_prompt(nonce: int, prefix: str, lora: str | None = None) -> dict:
    """Tiny SD3 through a passthrough (same MODEL object, fresh execution), Euler, saved latent."""
    p = {
        "unet": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"},
        },
        "pass": {"class_type": "DenseGRPOTest_Passthrough", "inputs": {"model": ["unet", 0], "nonce": nonce}},
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
            "pos": {"class_type": "DenseGRPOTest_SD3Conditioning", "inputs": {"text": "a red cube", "seed": 0}},
            "neg": {"class_type": "DenseGRPOTest_SD3Conditioning", "inputs": {"text": "", "seed": 0}},
            "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
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
                    "cfg": 2.0,
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


def train_prompt(name: str, iterations: int, resume: str = "") -> dict:
    return {
        "unet": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"},
        },
        "clip": {"class_type": "DenseGRPOTest_TinyCLIP", "inputs": {}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "reward": {"class_type": "DenseGRPO_LoadJPEGCompressibility", "inputs": {"device": "cpu"}},
        "psi": {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        **train_nodes(
            {
                "model": ["unet", 0],
                "clip": ["clip", 0],
                "vae": ["vae", 0],
                "reward_model": ["reward", 0],
                "psi": ["psi", 0],
                "prompts": "a red cube\na blue ball",
                "negative_prompt": "",
                "latent_image": ["latent", 0],
                "lora_name": name,
                "iterations": iterations,
                "group_size": 2,
                "steps": 3,
                "cfg": 2.0,
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
                "resume_job": resume,
            }
        ),
    }


def latent(comfy, prefix):
    from safetensors.torch import load_file

    return load_file(sorted(glob.glob(os.path.join(comfy.output_dir, f"{prefix}_*.latent")))[-1])["latent_tensor"]


def job_id_of(entry) -> str:
    text = " ".join(entry["outputs"]["train"]["text"])
    return re.search(r"job ([a-z0-9]{12})", text).group(1)


def job(comfy, job_id):
    return comfy.get(f"/densegrpo/jobs/{job_id}")


def wait_for(comfy, job_id, predicate, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = job(comfy, job_id)
        if predicate(j):
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach the condition in {timeout}s: {job(comfy, job_id)}")


@pytest.fixture(scope="module")
def stopped_job(comfy):
    """A training job started from a workflow, observed while running, then stopped over HTTP."""
    comfy.run(sample_prompt(1, "before"))
    t0 = time.time()
    entry = comfy.run(train_prompt("../../x", iterations=100000))
    returned_s = time.time() - t0
    job_id = job_id_of(entry)
    running = wait_for(comfy, job_id, lambda j: j["state"] == "running" and j["iteration"] >= 2)
    comfy.run(sample_prompt(2, "during"))
    during_state = job(comfy, job_id)["state"]
    stop = comfy.post(f"/densegrpo/jobs/{job_id}/stop")
    final = wait_for(comfy, job_id, lambda j: j["state"] in ("stopped", "failed", "finished"))
    return {
        "id": job_id,
        "returned_s": returned_s,
        "running": running,
        "during_state": during_state,
        "stop": stop,
        "final": final,
    }


def test_train_prompt_returns_while_the_job_keeps_running(stopped_job):
    assert stopped_job["returned_s"] < 60
    assert stopped_job["during_state"] == "running"


def test_a_prompt_on_the_shared_model_during_training_is_bit_identical(comfy, stopped_job):
    assert torch.equal(latent(comfy, "before"), latent(comfy, "during"))
    comfy.run(sample_prompt(3, "after"))
    assert torch.equal(latent(comfy, "before"), latent(comfy, "after"))


def test_stop_over_http_ends_the_job_with_a_lora(comfy, stopped_job):
    assert stopped_job["stop"]["state"] in ("stopping", "stopped")
    assert stopped_job["final"]["state"] == "stopped", stopped_job["final"]
    assert stopped_job["final"]["loras"]


def test_lora_name_with_path_traversal_stays_in_the_densegrpo_lora_folder(comfy, stopped_job):
    folder = os.path.join(comfy.models_dir, "loras", "densegrpo")
    names = os.listdir(folder)
    assert "x_latest.safetensors" in names and any(re.fullmatch(r"x_\d{5}\.safetensors", n) for n in names)
    assert not glob.glob(os.path.join(comfy.base_dir, "x_*.safetensors"))
    assert not glob.glob(os.path.join(comfy.models_dir, "x_*.safetensors"))


def test_stock_lora_loader_applies_the_lora_without_warnings_and_changes_the_output(comfy, stopped_job):
    before_log = len(comfy.log())
    comfy.run(sample_prompt(4, "with_lora", lora="densegrpo/x_latest.safetensors"))
    assert "lora key not loaded" not in comfy.log()[before_log:]
    assert not torch.equal(latent(comfy, "with_lora"), latent(comfy, "before"))


def test_lora_records_the_scheduler_and_sigmas_it_trained_on(comfy, stopped_job):
    """The Train node trains on ComfyUI's `normal` sigmas, which for SD3 are Flow-GRPO's scheduler grid."""
    import json

    from safetensors import safe_open

    from densegrpo_core.method.schedule import sd3_scheduler_grid

    path = os.path.join(comfy.models_dir, "loras", "densegrpo", "x_latest.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["scheduler"] == "normal" and meta["grid"] == "explicit"
    sigmas = json.loads(meta["sigmas"])
    assert len(sigmas) == 4
    torch.testing.assert_close(torch.tensor(sigmas), sd3_scheduler_grid(3, 3.0), atol=1e-5, rtol=0)


def test_a_psi_calibrated_on_another_grid_is_refused_naming_both(comfy, tmp_path):
    from harness import ComfyError

    from densegrpo_core.method.schedule import Psi, shifted_linspace_grid

    folder = os.path.join(comfy.output_dir, "densegrpo", "psi")
    os.makedirs(folder, exist_ok=True)
    Psi([0.7, 0.6, 0.5], tau=shifted_linspace_grid(3, 3.0).tolist(), meta={"source": "calibration"}).save(
        os.path.join(folder, "other_grid.json")
    )
    p = train_prompt("other_grid", iterations=1)
    p["psi"] = {"class_type": "DenseGRPO_PsiLoad", "inputs": {"psi_file": "other_grid.json"}}
    with pytest.raises(
        ComfyError,
        match=r"input 'psi'.*calibrated on the grid \[1, 0.8571, 0.6, 0\].*used on the grid of "
        r"scheduler 'normal' \(3 steps\) \[1, 0.7511, 0.008929, 0\]",
    ):
        comfy.run(p)


def test_resume_continues_the_same_job_with_its_whole_curve(comfy, stopped_job):
    done = stopped_job["final"]["iteration"]
    entry = comfy.run(train_prompt("x", iterations=100000, resume=stopped_job["id"]))
    assert job_id_of(entry) == stopped_job["id"]  # one run, one job
    running = wait_for(comfy, stopped_job["id"], lambda j: j["state"] == "running" and j["iteration"] >= done + 2)
    status, body = comfy.request("DELETE", f"/densegrpo/jobs/{stopped_job['id']}")  # a running job stays
    assert status == 409 and "stop it first" in body["error"], (status, body)
    comfy.post(f"/densegrpo/jobs/{stopped_job['id']}/stop")  # stopped again for the tests below
    final = wait_for(comfy, stopped_job["id"], lambda j: j["state"] in ("finished", "failed", "stopped"))
    assert final["state"] == "stopped" and final["iteration"] >= running["iteration"], final
    full = comfy.get(f"/densegrpo/jobs/{stopped_job['id']}?full=1")
    assert [m["iteration"] for m in full["metrics"]] == list(range(1, final["iteration"] + 1))
    assert [r["iteration"] for r in full["resumes"]] == [done]


def test_deleting_an_ended_job_over_http_removes_its_folder_and_keeps_its_loras(comfy):
    job_id = job_id_of(comfy.run(train_prompt("deleted", iterations=1)))
    final = wait_for(comfy, job_id, lambda j: j["state"] in ("finished", "failed", "stopped"))
    assert final["state"] == "finished", final
    folder = os.path.join(comfy.output_dir, "densegrpo", "jobs", job_id)
    assert os.path.isdir(folder)
    assert comfy.request("DELETE", f"/densegrpo/jobs/{job_id}")[0] == 200
    assert not os.path.exists(folder)
    assert os.path.isfile(os.path.join(comfy.models_dir, "loras", "densegrpo", "deleted_latest.safetensors"))
    for method, path, expected in [
        ("GET", f"/densegrpo/jobs/{job_id}", (404,)),
        ("DELETE", f"/densegrpo/jobs/{job_id}", (404,)),
        ("DELETE", "/densegrpo/jobs/ABCDEF012345", (400,)),
        ("DELETE", "/densegrpo/jobs/..%2F..%2Fetc", (400, 404)),
    ]:
        assert comfy.request(method, path)[0] in expected, (method, path)


def test_clear_finished_over_http_deletes_the_finished_jobs_only(comfy, stopped_job):
    finished = [j["id"] for j in comfy.get("/densegrpo/jobs")["jobs"] if j["state"] == "finished"]
    deleted = comfy.post("/densegrpo/jobs/clear_finished")["deleted"]
    assert sorted(deleted) == sorted(finished)
    states = {j["id"]: j["state"] for j in comfy.get("/densegrpo/jobs")["jobs"]}
    assert "finished" not in states.values() and states[stopped_job["id"]] == "stopped"


def test_job_routes_answer_404_for_unknown_and_400_for_malformed_ids(comfy, stopped_job):
    from harness import ComfyHTTPError

    with pytest.raises(ComfyHTTPError) as info:
        comfy.get("/densegrpo/jobs/abcdefabcdef")
    assert info.value.status == 404
    with pytest.raises(ComfyHTTPError) as info:
        comfy.get("/densegrpo/jobs/..%2F..%2Fetc")
    assert info.value.status in (400, 404)
    with pytest.raises(ComfyHTTPError) as info:
        comfy.post("/densegrpo/jobs/zzzzzzzzzzzz/stop")
    assert info.value.status == 404
    listed = comfy.get("/densegrpo/jobs")["jobs"]
    assert stopped_job["id"] in [j["id"] for j in listed]


def test_status_node_shows_the_reward_curve_and_samples(comfy, stopped_job):
    entry = comfy.run(
        {
            "status": {"class_type": "DenseGRPO_TrainingStatus", "inputs": {"job_id": stopped_job["id"]}},
            "save": {
                "class_type": "SaveImage",
                "inputs": {"images": ["status", 1], "filename_prefix": "densegrpo_status"},
            },
        }
    )
    text = " ".join(entry["outputs"]["status"]["text"])
    assert stopped_job["id"] in text and "stopped" in text
    shown = [im["filename"] for im in entry["outputs"]["status"]["images"]]
    assert any("reward_curve" in f for f in shown) and any("samples" in f for f in shown)
    keep = os.environ.get("DENSEGRPO_SCREENSHOT_DIR")
    if keep:  # README evidence: the Status node's rendered plots
        os.makedirs(keep, exist_ok=True)
        shutil.copy(
            sorted(glob.glob(os.path.join(comfy.output_dir, "densegrpo_status_*.png")))[-1],
            os.path.join(keep, "comfyui_training_status.png"),
        )


def test_unknown_job_id_in_the_status_node_is_a_clear_error(comfy):
    from harness import ComfyError

    with pytest.raises(ComfyError, match="not a known DenseGRPO job id"):
        comfy.run({"status": {"class_type": "DenseGRPO_TrainingStatus", "inputs": {"job_id": "nope"}}})


def test_a_run_whose_memory_estimate_exceeds_free_memory_is_refused_before_it_starts(comfy):
    from harness import ComfyError

    p = train_prompt("too_big", iterations=10)
    p["latent"]["inputs"].update(width=1024, height=1024)
    set_train(p, group_size=256, steps=100, lora_name="too_big")
    with pytest.raises(ComfyError, match="input 'allow_over_memory' is off and the estimated peak memory"):
        comfy.run(p)
    assert not glob.glob(os.path.join(comfy.models_dir, "loras", "densegrpo", "too_big_*"))


def test_train_status_text_shows_the_estimate(comfy):
    p = train_prompt("estimate_shown", iterations=1)
    set_train(p, free_cached_models=True)
    entry = comfy.run(p)
    text = " ".join(entry["outputs"]["train"]["text"])
    assert re.search(r"estimate ~[\d.]+ GiB peak .* s / iteration", text), text
    wait_for(comfy, job_id_of(entry), lambda j: j["state"] in ("finished", "failed", "stopped"))


def test_resume_with_other_settings_is_refused_naming_the_setting(comfy, stopped_job):
    from harness import ComfyError

    p = train_prompt("x", iterations=50, resume=stopped_job["id"])
    set_train(p, group_size=3)
    with pytest.raises(ComfyError, match="input 'resume_job'.*group_size=2"):
        comfy.run(p)


def test_job_routes_name_files_relative_to_comfyuis_folders(comfy, stopped_job):
    full = comfy.get(f"/densegrpo/jobs/{stopped_job['id']}?full=1")
    listed = comfy.get("/densegrpo/jobs")
    for answer in (full, listed):
        text = json.dumps(answer)
        assert comfy.base_dir not in text and '"/' not in text
    assert full["folder"] == f"densegrpo/jobs/{stopped_job['id']}"
    assert all(re.fullmatch(r"densegrpo/x_\d{5}\.safetensors", name) for name in full["loras"])
    assert "traceback" not in full


def test_the_panel_serves_a_jobs_plots_and_nothing_else(comfy, stopped_job):
    from harness import ComfyHTTPError

    status, body = comfy.request("GET", f"/densegrpo/jobs/{stopped_job['id']}/files/samples.png")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ComfyHTTPError) as info:
        comfy.get(f"/densegrpo/jobs/{stopped_job['id']}/files/job.json")
    assert info.value.status == 404


def test_resume_prompt_is_the_jobs_workflow_set_to_resume_it(comfy, stopped_job):
    prompt = comfy.get(f"/densegrpo/jobs/{stopped_job['id']}/resume_prompt")["prompt"]
    assert prompt["train"]["class_type"] == "DenseGRPO_TrainLoRA"
    assert prompt["train"]["inputs"]["resume_job"] == stopped_job["id"]
