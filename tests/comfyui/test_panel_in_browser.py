"""The DenseGRPO sidebar panel in ComfyUI's real front-end, driven in headless Chromium.

One scenario (browser/panel_scenario.cjs) plays a new user: load a training workflow on the tiny SD3, press
Run, open the DenseGRPO tab, watch the iteration rise without queueing again, press Run again with the same
settings, add a LoRA to the workflow, press Stop, press Resume (the same row continues), open the large view,
Stop, let a short job finish, reload the page, clear the finished jobs, delete the stopped job (Cancel once,
then Delete) and reload. The tests below check its observations.

Needs, besides $COMFYUI_PATH: `node`, the npm package playwright-core (a node_modules folder named by
$DENSEGRPO_PLAYWRIGHT, or tests/comfyui/browser/node_modules from `npm install playwright-core` there) and a
Chromium ($DENSEGRPO_CHROMIUM, else chromium on PATH); skipped with the reason when one is missing.
$DENSEGRPO_SCREENSHOT_DIR keeps the screenshots (comfyui_panel_running.png, comfyui_panel_stopped.png,
comfyui_panel_large.png, comfyui_panel_delete.png; docs/img has the first three).
"""

import json
import os
import re
import shutil
import subprocess

import pytest
from train_prompts import train_nodes

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "browser", "panel_scenario.cjs")
NAME = "browser_panel"
SHORT = "browser_short"  # a 2-iteration job that finishes (for "Clear finished")
TRAIN = "7"


def browser_tools():
    """((node, playwright node_modules, chromium), None), or (None, the reason to skip)."""
    node = shutil.which("node")
    if not node:
        return None, "browser tests: `node` is not on PATH (install Node.js 18+)"
    candidates = [os.environ.get("DENSEGRPO_PLAYWRIGHT", ""), os.path.join(HERE, "browser", "node_modules")]
    modules = next(
        (c for c in candidates if c and os.path.isfile(os.path.join(c, "playwright-core", "package.json"))), None
    )
    if not modules:
        return None, (
            "browser tests: playwright-core not found (set DENSEGRPO_PLAYWRIGHT to a node_modules folder "
            "holding it, or run `npm install --prefix tests/comfyui/browser playwright-core`)"
        )
    chromium = os.environ.get("DENSEGRPO_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if not chromium or not os.path.exists(chromium):
        return None, "browser tests: no Chromium found (set DENSEGRPO_CHROMIUM or put chromium on PATH)"
    return (node, modules, chromium), None


TOOLS, MISSING = browser_tools()


def run_scenario(comfy, scenario: str, folder, settings: dict, job_names) -> dict:
    """Run a browser scenario (.cjs) against `comfy` with `settings` (+ the server URL and the browser tools) in
    its config.json; stop the training jobs named `job_names` it left and wait until they end (their memory
    reservations must not reach the next tests); → the observations it printed (also in observations.json)."""
    from test_training_in_comfyui import wait_for

    node, modules, chromium = TOOLS
    config = os.path.join(folder, "config.json")
    with open(config, "w") as f:
        json.dump({"url": comfy.url, "playwright": modules, "chromium": chromium, "timeout_ms": 180_000, **settings}, f)
    try:
        res = subprocess.run([node, scenario, config], capture_output=True, text=True, timeout=900)
    finally:  # never leave a training job running (or its memory reserved) for the next tests
        for job in comfy.get("/densegrpo/jobs")["jobs"]:
            if job["name"] in job_names and job["state"] in ("queued", "running"):
                comfy.post(f"/densegrpo/jobs/{job['id']}/stop")
            if job["name"] in job_names:
                wait_for(comfy, job["id"], lambda j: j["state"] in ("finished", "failed", "stopped"))
    try:
        out = json.loads(res.stdout)
    except ValueError:
        raise AssertionError(
            f"the browser scenario printed no result (rc {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
        ) from None
    if out.get("error"):
        raise AssertionError(
            f"browser scenario failed: {out['error']}\nsteps: {out.get('steps')}\n"
            f"console: {out.get('console', [])[-30:]}\n(screenshot: {settings.get('screenshots', '')}/failure.png)"
        )
    with open(os.path.join(folder, "observations.json"), "w") as f:  # for a look after a failure
        json.dump(out, f, indent=1)
    return out


# skipped before the session's ComfyUI starts when a browser tool is missing
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def train_workflow(name: str = NAME, iterations: int = 100000) -> dict:
    """API-format workflow: tiny SD3 → Passthrough (a nonce to make ComfyUI run the Train node again on the
    same MODEL) → DenseGRPO Train LoRA, by default a long run that the test stops. The training reward is a
    constant (no signal: the health warning must show), JPEG compressibility scores every evaluation as a
    held-out reward. The one place the scenario's Train node is spelled out."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DenseGRPOTest_TinyCLIP", "inputs": {}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "4": {"class_type": "DenseGRPO_LoadJPEGCompressibility", "inputs": {"device": "cpu"}},
        "5": {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "DenseGRPOTest_Passthrough", "inputs": {"model": ["1", 0], "nonce": 0}},
        "9": {"class_type": "DenseGRPOTest_ConstantReward", "inputs": {}},
        **train_nodes(
            {
                "model": ["8", 0],
                "clip": ["2", 0],
                "vae": ["3", 0],
                "reward_model": ["9", 0],
                "eval_reward": ["4", 0],
                "eval_every": 1,
                "psi": ["5", 0],
                "prompts": "a red cube\na blue ball",
                "negative_prompt": "",
                "latent_image": ["6", 0],
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
                "resume_job": "",
            },
            node_id=TRAIN,
        ),
    }


@pytest.fixture(scope="module")
def seen(comfy, tmp_path_factory):
    """The scenario's observations (JSON printed by panel_scenario.cjs)."""
    folder = tmp_path_factory.mktemp("browser")
    shots = os.environ.get("DENSEGRPO_SCREENSHOT_DIR") or str(folder / "screenshots")
    settings = {
        "prompt": train_workflow(),
        "short_prompt": train_workflow(SHORT, iterations=2),
        "short_name": SHORT,
        "train_node": TRAIN,
        "screenshots": shots,
    }
    out = run_scenario(comfy, SCENARIO, folder, settings, job_names=(NAME, SHORT))
    out["screenshots"] = shots
    return out


def test_the_job_appears_in_the_panel_and_its_iteration_rises_without_queueing_again(seen):
    assert seen["later_iteration"] > seen["first_iteration"] >= 1
    assert seen["prompts_posted_while_watching"] == 1
    assert re.search(r"iteration \d+/100000 · reward -?\d+\.\d+ · \d+\.\d+ s/it · ETA", seen["later_text"])


def test_the_train_node_shows_iteration_reward_and_eta_while_its_job_runs(seen):
    assert re.search(
        r"DenseGRPO job [a-z0-9]{12} running · iteration \d+/100000 · reward -?\d+\.\d+ · "
        r"\d+\.\d+ s/it · ETA",
        seen["node_progress_text"],
    )


def test_the_selected_job_shows_reward_curve_sign_counts_samples_and_lora_files(seen):
    text = seen["detail_text"]
    assert "reward" in text and "ΔR signs per step" in text and "latest samples" in text
    assert re.search(rf"densegrpo/{NAME}_\d{{5}}\.safetensors", text)


def test_the_reward_chart_draws_the_held_out_reward_of_every_evaluation(seen):
    assert "evaluation reward" in seen["chart_series"]
    assert [s for s in seen["chart_series"] if s.startswith("eval ")], seen["chart_series"]


def test_a_run_without_reward_signal_shows_the_health_warning_in_the_panel_and_on_the_node(seen):
    assert "no_signal" in [w["code"] for w in seen["warnings"]]
    assert "reward gives no signal" in seen["warnings"][0]["text"]
    assert "warning: " in seen["node_progress_text"] and "no signal" in seen["node_progress_text"]


def test_queueing_the_same_workflow_again_while_it_trains_returns_its_job(seen):
    assert seen["jobs_after_second_run"] == [{"id": seen["job_id"], "state": "running"}]
    assert f"job {seen['job_id']} running: already training with these settings" in seen["second_run_text"]


def test_add_lora_to_workflow_adds_a_lora_loader_with_that_file(seen):
    assert seen["lora_node"]["type"] == "LoraLoaderModelOnly"
    assert re.fullmatch(rf"densegrpo/{NAME}_\d{{5}}\.safetensors", seen["lora_node"]["lora"])


def test_stop_in_the_panel_stops_the_job_and_a_toast_says_so(seen):
    assert seen["state_after_stop_click"] in ("stopping", "stopped")
    assert "DenseGRPO training stopped" in seen["toast"] and seen["job_id"] in seen["toast"]


def test_resume_in_the_panel_continues_the_same_job_in_its_row(seen):
    assert seen["rows_after_resume"] == [seen["job_id"]]
    assert seen["resumed"]["id"] == seen["job_id"] and seen["resumed"]["total"] == 100000
    assert [r["iteration"] for r in seen["resumed"]["resumes"]] == [seen["stopped_iteration"]]


def curve_is_whole_with_one_resume_mark(curve, resumed_at):
    """The curve's points are iterations 1, 2, ..., last (no gap at the resume) and one mark sits at the resume."""
    return (
        curve["first"] == 1
        and curve["points"] == curve["last"]
        and curve["last"] > resumed_at
        and curve["marks"] == [resumed_at]
        and curve["resumes"] == str(resumed_at)
    )


def test_the_resumed_jobs_curve_starts_at_iteration_1_with_a_mark_at_the_resume(seen):
    assert curve_is_whole_with_one_resume_mark(seen["curve_after_resume"], seen["stopped_iteration"]), seen[
        "curve_after_resume"
    ]


def test_the_large_view_shows_the_curve_signs_and_samples_larger_than_the_panel(seen):
    large = seen["large"]
    assert large["role"] == "dialog" and large["bars"]
    assert seen["large_curve"]["width"] > 2 * large["panel_chart_width"] > 0
    assert curve_is_whole_with_one_resume_mark(seen["large_curve"], seen["stopped_iteration"])
    samples = next(i for i in large["images"] if i["file"] == "samples.png")
    assert samples["width"] > 1.5 * samples["panel_width"] > 0, large["images"]


def test_after_a_page_reload_the_job_is_one_row_with_its_final_state_and_whole_curve(seen):
    assert seen["after_reload"]["id"] == seen["job_id"] and seen["rows_after_reload"] == [seen["job_id"]]
    assert seen["after_reload"]["state"] == "stopped"
    assert seen["after_reload"]["iteration"] == seen["resumed_stopped_iteration"]
    curve = seen["curve_after_reload"]
    assert curve_is_whole_with_one_resume_mark(curve, seen["stopped_iteration"]), curve
    assert curve["last"] == seen["resumed_stopped_iteration"]


def test_the_list_shows_the_recent_jobs_until_show_all_with_the_selected_jobs_details(seen):
    """With "Recent jobs" set to 1, the newest ended job is listed (and selected), the older one behind "Show all"."""
    listed = seen["list_before_show_all"]
    jobs = listed["jobs"]  # this scenario's 2, and any other suite's jobs on the same server
    assert listed["active"] == 0 and jobs >= 2
    assert listed["rows"] == [seen["short_job"]["id"]] and listed["hidden"] == jobs - 1
    assert listed["button"] == f"Show all {jobs} jobs ({jobs - 1} more)" and listed["detail"] == seen["short_job"]["id"]


def test_clear_finished_asks_first_then_deletes_the_finished_job_only(seen):
    assert "LoRA files in models/loras stay" in seen["clear_confirm"] and SHORT in seen["clear_confirm"]
    listed = {j["id"]: j["state"] for j in seen["after_clear"]}
    assert seen["short_job"]["id"] not in listed and listed[seen["job_id"]] == "stopped"


def test_cancel_keeps_the_job_and_delete_removes_it_for_good(comfy, seen):
    assert seen["job_id"] in [j["id"] for j in seen["after_cancel"]]
    assert seen["job_id"] in seen["delete_confirm"] and "LoRA files in models/loras stay" in seen["delete_confirm"]
    assert seen["job_id"] not in [j["id"] for j in seen["after_delete"]]
    assert seen["job_id"] not in seen["rows_after_delete_reload"]
    assert not os.path.exists(os.path.join(comfy.output_dir, "densegrpo", "jobs", seen["job_id"]))


def test_deleting_jobs_keeps_their_lora_files(comfy, seen):
    folder = os.path.join(comfy.models_dir, "loras", "densegrpo")
    for name in (NAME, SHORT):
        assert os.path.isfile(os.path.join(folder, f"{name}_latest.safetensors")), name


def test_rows_leave_out_values_that_do_not_exist_yet(seen):
    assert seen["row_texts"]
    assert not [t for t in seen["row_texts"] if "–" in t or "— s/it" in t or "reward —" in t]


def test_the_console_has_no_unknown_message_type(seen):
    assert seen["unknown_message_lines"] == []


def test_the_extension_loads_once_and_announces_a_stop_once(seen):
    assert not [m for m in seen["console"] if "densegrpo" in m.lower() and "error" in m.lower()]
    assert seen["stop_toasts"] == 1


def test_websocket_events_name_no_absolute_server_paths(comfy, seen):
    assert {"state", "iteration", "lora", "plots"} <= {e["type"] for e in seen["events"]}
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', json.dumps(seen["events"]))
    assert not [s for s in strings if s.startswith("/") or comfy.base_dir in s]
    lora = next(e for e in seen["events"] if e["type"] == "lora")
    assert re.fullmatch(rf"densegrpo/{NAME}_\d{{5}}\.safetensors", lora["path"])


def test_screenshots_of_the_running_stopped_and_large_panel_and_the_delete_dialog_are_saved(seen):
    for name in (
        "comfyui_panel_running.png",
        "comfyui_panel_stopped.png",
        "comfyui_panel_large.png",
        "comfyui_panel_delete.png",
    ):
        assert os.path.getsize(os.path.join(seen["screenshots"], name)) > 10_000
