"""The compact Train node and DenseGRPO Training Options inside a real ComfyUI (skipped without $COMFYUI_PATH):
which inputs are where, the options reaching the job, and old workflows and prompts of the 31-widget Train node
still loading and training with their values."""

import json
import os
import subprocess
import sys

import pytest
from test_training_in_comfyui import job_id_of, train_prompt, wait_for
from train_prompts import OPTIONS, TRAIN, TRAIN_INPUTS, set_train

pytestmark = pytest.mark.comfyui
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from migrate_train_workflow import OLD_WIDGETS, migrate  # noqa: E402
from workflow_format import to_api  # noqa: E402

OLD_NODE_COMMIT = "9c128a9e8463e5a204ad8b08a608f214d8bf6c36"  # the last commit with the 31-widget Train node
# the old node's settings that moved, with the defaults they had there
MOVED_DEFAULTS = {
    "beta": 0.04,
    "save_every": 10,
    "seed": 0,
    "prompts_file": "(none)",
    "prompts_per_iteration": 2,
    "lora_rank": 32,
    "lora_alpha": 64.0,
    "clip_range": 1e-4,
    "train_batch": 8,
    "max_batch": 32,
    "resume_job": "",
    "allow_over_memory": False,
    "gradient_checkpointing": True,
    "bf16_autocast": False,
    "offload_reward": False,
    "free_cached_models": False,
    "sde_window": 0,
    "sde_window_schedule": "random",
    "guidance": -1.0,
    "eval_every": 0,
}
TERMINAL = ("finished", "failed", "stopped")


def old_workflow(name="densegrpo_train_lora.json") -> dict:
    """A workflow file of the pack as it was before the change, from git history (skipped without it)."""
    res = subprocess.run(
        ["git", "-C", ROOT, "show", f"{OLD_NODE_COMMIT}:workflows/{name}"], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"git history with commit {OLD_NODE_COMMIT[:10]} is not available: {res.stderr.strip()}")
    return json.loads(res.stdout)


def lora_meta(comfy, name):
    from safetensors import safe_open

    with safe_open(os.path.join(comfy.models_dir, "loras", "densegrpo", f"{name}_latest.safetensors"), "pt") as f:
        return f.metadata()


def run_to_end(comfy, prompt) -> dict:
    return wait_for(comfy, job_id_of(comfy.run(prompt)), lambda j: j["state"] in TERMINAL)


def flat_train_prompt(name: str, **settings) -> dict:
    """A prompt as written for the 31-widget Train node: every setting on the Train node itself."""
    p = train_prompt(name, iterations=1)
    options = p.pop("train_options")["inputs"]
    del p["train"]["inputs"]["options"]
    p["train"]["inputs"].update(options, **settings)
    return p


def test_the_train_node_has_the_essentials_and_the_options_node_the_rest_with_the_old_defaults(comfy):
    train, options = comfy.object_info(TRAIN)[TRAIN], comfy.object_info(OPTIONS)[OPTIONS]
    order = train["input_order"]
    assert (order["required"], order["optional"]) == (list(TRAIN_INPUTS), ["options"])
    assert train["input"]["optional"]["options"][0] == options["output"][0] == "DENSEGRPO_TRAIN_OPTIONS"
    specs = options["input"]["optional"]
    new = {"eval_reward", "uncond_grad", "reward_timeout_s"}  # options the 31-widget node did not have
    assert set(specs) == set(MOVED_DEFAULTS) | new and not options["input"]["required"]
    assert {k: specs[k][1].get("default", specs[k][0][0]) for k in MOVED_DEFAULTS} == MOVED_DEFAULTS
    assert specs["uncond_grad"][1]["default"] is True and specs["reward_timeout_s"][1]["default"] == 600.0
    assert specs["seed"][1]["control_after_generate"] is False  # a randomised seed would start a job per queue


def test_the_options_nodes_settings_reach_the_job(comfy):
    p = train_prompt("options_reach", iterations=1)
    set_train(p, lora_rank=3, lora_alpha=6.0)
    assert run_to_end(comfy, p)["state"] == "finished"
    meta = lora_meta(comfy, "options_reach")
    assert (meta["rank"], float(meta["alpha"])) == ("3", 6.0)


def test_detaching_the_cfg_unconditional_pass_is_a_different_training_configuration(comfy):
    hashes = {}
    for detach in (False, True):
        p = train_prompt(f"uncond_{detach}", iterations=1)
        set_train(p, uncond_grad=not detach)
        assert run_to_end(comfy, p)["state"] == "finished"
        hashes[detach] = lora_meta(comfy, f"uncond_{detach}")["config_hash"]
    assert hashes[False] != hashes[True]


def test_an_old_api_prompt_with_every_setting_on_the_train_node_trains_with_them(comfy):
    p = flat_train_prompt("old_api", lora_rank=5, lora_alpha=10.0, eval_every=1, eval_reward=["reward", 0])
    final = run_to_end(comfy, p)
    assert final["state"] == "finished", final
    meta = lora_meta(comfy, "old_api")
    assert (meta["rank"], float(meta["alpha"])) == ("5", 10.0)
    evals = comfy.get(f"/densegrpo/jobs/{final['id']}?full=1")["evals"]
    assert evals and evals[-1]["eval_rewards"], evals  # the eval_reward link on the Train node was used


def test_a_setting_on_the_train_node_itself_wins_over_the_options_node(comfy):
    p = train_prompt("train_node_wins", iterations=1)
    set_train(p, lora_rank=3)
    p["train"]["inputs"]["lora_rank"] = 2  # as the panel's Resume sets resume_job on the Train node
    assert run_to_end(comfy, p)["state"] == "finished"
    assert lora_meta(comfy, "train_node_wins")["rank"] == "2"


def test_an_old_ui_workflow_loads_its_essentials_into_the_right_widgets(comfy):
    """The front end gives a saved node's widgets_values to its widgets by position; to_api does the same."""
    old = old_workflow()
    node = next(n for n in old["nodes"] if n["type"] == TRAIN)
    saved = dict(zip(OLD_WIDGETS, node["widgets_values"]))
    prompt = to_api(old, comfy.object_info())
    train = prompt[str(node["id"])]["inputs"]
    widgets = [k for k in TRAIN_INPUTS if k in saved]
    assert len(widgets) == 10 and {k: train[k] for k in widgets} == {k: saved[k] for k in widgets}
    assert not set(train) & set(MOVED_DEFAULTS)  # the rest takes the defaults


def test_the_migration_tool_keeps_every_value_of_an_old_workflow(comfy):
    info = comfy.object_info()
    for name in ("densegrpo_train_lora.json", "densegrpo_train_lora_flux.json"):
        old = old_workflow(name)
        node = next(n for n in old["nodes"] if n["type"] == TRAIN)
        saved = {k: v for k, v in zip(OLD_WIDGETS, node["widgets_values"]) if k != "(seed control)"}
        prompt = to_api(migrate(old, info), info)
        train = prompt[str(node["id"])]["inputs"]
        options = prompt[train["options"][0]]
        assert options["class_type"] == OPTIONS
        assert {**train, **options["inputs"]}.items() >= saved.items()
        before = to_api({**old, "nodes": [n for n in old["nodes"] if n["type"] != TRAIN]}, info)
        assert {k: v for k, v in prompt.items() if k in before} == before  # every other node as it was


def test_the_reward_time_limit_of_the_options_node_reaches_the_job(comfy):
    p = train_prompt("reward_timeout", iterations=1)
    set_train(p, reward_timeout_s=0.0)  # 0 = no limit
    job = run_to_end(comfy, p)
    assert job["state"] == "finished"
    folder = os.path.join(comfy.output_dir, "densegrpo", "jobs", job["id"])
    configs = [os.path.join(d, "config.json") for d, _, files in os.walk(folder) if "config.json" in files]
    assert configs  # the checkpoint's copy of the job's TrainConfig
    with open(configs[0]) as f:
        assert json.load(f)["reward_timeout_s"] is None
