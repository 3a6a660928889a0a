"""Move the settings of old DenseGRPO Train LoRA nodes (the 31-widget node) of UI-format workflows onto a
DenseGRPO Training Options node, keeping every value.

    python tools/migrate_train_workflow.py http://127.0.0.1:8188 old.json [more.json ...]   # rewrites them

ComfyUI loads an old workflow without this too: the Train node's first ten widgets kept their order, so their
values land where they belong, but the other settings (beta, seed, LoRA rank, ...) then take their defaults.
This tool keeps them: it gives each old Train node an Options node holding the old values, linked to its
`options` input (and moves an eval_reward link there). Needs /object_info of a ComfyUI with the pack.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workflow_format import _default, _inputs, has_control_value, is_widget  # noqa: E402

TRAIN, OPTIONS = "DenseGRPO_TrainLoRA", "DenseGRPO_TrainingOptions"
# the widgets_values of the old node, in order (older versions of it saved a prefix of this list)
OLD_WIDGETS = (
    "prompts",
    "negative_prompt",
    "lora_name",
    "iterations",
    "group_size",
    "steps",
    "cfg",
    "scheduler",
    "advantage_mode",
    "learning_rate",
    "beta",
    "save_every",
    "seed",
    "(seed control)",
    "prompts_file",
    "prompts_per_iteration",
    "lora_rank",
    "lora_alpha",
    "clip_range",
    "train_batch",
    "max_batch",
    "resume_job",
    "allow_over_memory",
    "gradient_checkpointing",
    "bf16_autocast",
    "offload_reward",
    "free_cached_models",
    "sde_window",
    "sde_window_schedule",
    "guidance",
    "eval_every",
)
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def is_old_train_node(node: dict) -> bool:
    """A Train node saved by the 31-widget node: its 14th value is the seed's control-after-generate value."""
    values = node.get("widgets_values")
    return node.get("type") == TRAIN and isinstance(values, list) and len(values) > 13 and values[13] in CONTROL_VALUES


def old_values(node: dict) -> dict:
    return {name: v for name, v in zip(OLD_WIDGETS, node["widgets_values"]) if name != "(seed control)"}


def migrate(workflow: dict, object_info: dict, train_size=None, options_size=(360, 540), gap: float = 60.0) -> dict:
    """A copy of `workflow` with every old Train node split into the compact Train node (resized to
    `train_size` when given) + an Options node below it."""
    wf = json.loads(json.dumps(workflow))
    train_widgets = [n for n, spec in _inputs(object_info[TRAIN]) if is_widget(spec)]
    option_specs = _inputs(object_info[OPTIONS])
    options_type = object_info[OPTIONS]["output"][0]
    for node in [n for n in wf["nodes"] if is_old_train_node(n)]:
        old = old_values(node)
        node["widgets_values"] = [old[name] for name in train_widgets]
        options_id = max(n["id"] for n in wf["nodes"]) + 1
        wf["last_node_id"] = max(wf.get("last_node_id", 0), options_id)
        widgets, inputs = [], []
        for name, spec in option_specs:
            if is_widget(spec):
                widgets.append(old.get(name, _default(spec)))
                if has_control_value(name, spec):
                    widgets.append("fixed")
        eval_input = next((i for i in node.get("inputs", []) if i["name"] == "eval_reward"), None)
        if eval_input is not None:
            node["inputs"].remove(eval_input)
            if eval_input.get("link") is not None:
                inputs.append({"name": "eval_reward", "type": eval_input["type"], "link": eval_input["link"]})
                link = next(lk for lk in wf["links"] if lk[0] == eval_input["link"])
                link[3], link[4] = options_id, 0
        link_id = max([lk[0] for lk in wf["links"]] + [wf.get("last_link_id", 0)]) + 1
        wf["last_link_id"] = link_id
        node.setdefault("inputs", []).append({"name": "options", "type": options_type, "link": link_id})
        for lk in wf["links"]:  # input slots of the Train node after the removal
            if lk[3] == node["id"]:
                lk[4] = next(i for i, s in enumerate(node["inputs"]) if s.get("link") == lk[0])
        wf["links"].append([link_id, options_id, 0, node["id"], len(node["inputs"]) - 1, options_type])
        if train_size:
            node["size"] = list(train_size)
        x, y = node["pos"]
        wf["nodes"].append(
            {
                "id": options_id,
                "type": OPTIONS,
                "pos": [x, y + node["size"][1] + gap],
                "size": list(options_size),
                "flags": {},
                "order": len(wf["nodes"]),
                "mode": 0,
                "inputs": inputs,
                "outputs": [{"name": "options", "type": options_type, "links": [link_id], "slot_index": 0}],
                "properties": {"Node name for S&R": OPTIONS},
                "widgets_values": widgets,
            }
        )
    return wf


def main(url: str, paths: list[str]) -> None:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info") as r:
        info = json.load(r)
    for path in paths:
        with open(path) as f:
            wf = json.load(f)
        with open(path, "w") as f:
            json.dump(migrate(wf, info), f, indent=1)
        print("migrated", path)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
