"""The compact Train node and the Training Status node in ComfyUI's real front-end, in headless Chromium.

One scenario (browser/train_node_scenario.cjs): load the Train workflow of the pack as it was before the change
on a ComfyUI running that pack (git history; measured when available), then on this pack load the old workflow
(where do its values land?) and the new one (Train node + Training Options node: their heights, a screenshot),
and run a Train + Status prompt to see the Status node's preview while its job starts.

Needs what test_panel_in_browser.py needs (node, playwright-core, Chromium; skipped with the reason otherwise).
$DENSEGRPO_SCREENSHOT_DIR keeps the screenshot (comfyui_train_node.png), as for the panel's.
"""

import json
import os
import subprocess
import tarfile

import harness
import pytest
from test_panel_in_browser import MISSING, run_scenario
from test_train_options_in_comfyui import MOVED_DEFAULTS, OLD_NODE_COMMIT, ROOT, old_workflow
from test_training_in_comfyui import train_prompt
from train_prompts import TRAIN_INPUTS

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.join(HERE, "browser", "train_node_scenario.cjs")
NAME = "browser_status"
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def status_prompt() -> dict:
    """Train (a long run, stopped by the test) → Training Status: the Status node runs as the job starts."""
    p = train_prompt(NAME, iterations=100000)
    p["status"] = {"class_type": "DenseGRPO_TrainingStatus", "inputs": {"job": ["train", 0]}}
    return p


@pytest.fixture(scope="module")
def old_pack_url(tmp_path_factory):
    """A ComfyUI running the pack as of OLD_NODE_COMMIT (None when git history is not available)."""
    folder = tmp_path_factory.mktemp("old_pack")
    archive = folder / "pack.tar"
    res = subprocess.run(["git", "-C", ROOT, "archive", "-o", str(archive), OLD_NODE_COMMIT], capture_output=True)
    if res.returncode != 0:
        yield None
        return
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "pack", filter="data")
    server = harness.ComfyServer(harness.find_comfyui()[0], repo_root=str(folder / "pack"))
    try:
        yield server.start().url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def seen(comfy, old_pack_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser_train_node")
    shots = os.environ.get("DENSEGRPO_SCREENSHOT_DIR") or str(folder / "screenshots")
    with open(os.path.join(ROOT, "workflows", "densegrpo_train_lora.json")) as f:
        new_workflow = json.load(f)
    settings = {
        "old_url": old_pack_url,
        "old_workflow": old_workflow(),
        "new_workflow": new_workflow,
        "status_prompt": status_prompt(),
        "screenshot": os.path.join(shots, "comfyui_train_node.png"),
    }
    out = run_scenario(comfy, SCENARIO, folder, settings, job_names=(NAME,))
    out["screenshots"] = shots
    return out


def test_the_compact_train_node_is_less_than_half_as_tall_as_the_old_one(seen):
    old = seen.get("old_node_on_old_pack")
    if old is None:
        pytest.skip(f"git history with commit {OLD_NODE_COMMIT[:10]} is not available")
    new = seen["new_workflow"]["train"]
    assert old["widget_count"] >= 31 and new["widget_count"] == 10
    assert new["size"][1] < 0.5 * old["size"][1], (new["size"], old["size"])
    assert new["min_size"][1] < 0.5 * old["min_size"][1], (new["min_size"], old["min_size"])


def test_the_new_workflow_shows_the_train_node_with_its_options_node_connected(seen):
    train, options = seen["new_workflow"]["train"], seen["new_workflow"]["options"]
    assert set(train["widgets"]) == set(TRAIN_INPUTS) - {"model", "clip", "vae", "reward_model", "psi", "latent_image"}
    assert next(i for i in train["inputs"] if i["name"] == "options")["from"] == options["id"]
    assert set(options["widgets"]) == set(MOVED_DEFAULTS) | {"uncond_grad", "reward_timeout_s"}
    assert "control_after_generate" not in options["widgets"]  # the seed stays as set
    assert train["size"][1] >= train["min_size"][1] - 1  # nothing drawn outside the node


def test_an_old_workflow_loads_its_essentials_into_the_right_widgets_and_the_rest_takes_defaults(seen):
    old = old_workflow()
    saved = next(n for n in old["nodes"] if n["type"] == "DenseGRPO_TrainLoRA")["widgets_values"]
    train = seen["old_workflow"]["train"]
    assert list(train["widgets"].values()) == saved[:10]
    assert train["widgets"]["lora_name"] == "sd35m_pickscore_densegrpo" and train["widgets"]["iterations"] == 300
    assert seen["old_workflow"]["options"] is None  # no options node: its settings are the defaults
    assert [i["name"] for i in train["inputs"] if i["from"] is not None] == [
        "model",
        "clip",
        "vae",
        "reward_model",
        "psi",
        "latent_image",
    ]


def test_a_screenshot_of_the_train_and_options_nodes_is_saved(seen):
    path = os.path.join(seen["screenshots"], "comfyui_train_node.png")
    assert os.path.getsize(path) > 10_000


def test_the_status_node_shows_a_readable_card_while_its_job_starts_not_a_black_square(seen):
    preview = seen["status_preview"]
    assert seen["status_images"][0]["filename"].endswith("_starting.png")
    assert preview["width"] >= 320 and preview["height"] >= 100
    assert preview["mean"] > 180 and preview["std"] > 5  # a light card with text on it


def test_the_status_node_text_shows_a_dash_for_values_the_job_does_not_have_yet(seen):
    text = seen["status_text"]
    assert "iteration 0/100000 · reward — · s/it — · ETA —" in text, text
    assert "latest LoRA: —" in text
