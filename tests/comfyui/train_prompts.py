"""The one place the tests build DenseGRPO Train LoRA nodes of an API prompt: the essentials on the Train node,
every other setting on a DenseGRPO Training Options node connected to its `options` input."""

from __future__ import annotations

TRAIN = "DenseGRPO_TrainLoRA"
OPTIONS = "DenseGRPO_TrainingOptions"
# the Train node's own inputs (everything else is an option); test_train_options_in_comfyui checks this list
# against the node ComfyUI registers
TRAIN_INPUTS = (
    "model",
    "clip",
    "vae",
    "reward_model",
    "psi",
    "prompts",
    "negative_prompt",
    "latent_image",
    "lora_name",
    "iterations",
    "group_size",
    "steps",
    "cfg",
    "scheduler",
    "advantage_mode",
    "learning_rate",
)


def train_nodes(settings: dict, node_id: str = "train") -> dict:
    """{node_id: Train node, node_id + "_options": Options node (only when a setting needs it)} for the given
    settings ({input name: value or [node id, slot]}), each setting on the node that has it."""
    prompt = {node_id: {"class_type": TRAIN, "inputs": {}}}
    set_train(prompt, node_id, **settings)
    return prompt


def set_train(prompt: dict, node_id: str = "train", **settings) -> dict:
    """Set settings of the Train node `node_id` of `prompt`, options on its Options node (added when missing)."""
    train = prompt[node_id]["inputs"]
    for name, value in settings.items():
        if name in TRAIN_INPUTS:
            train[name] = value
            continue
        options_id = node_id + "_options"
        prompt.setdefault(options_id, {"class_type": OPTIONS, "inputs": {}})["inputs"][name] = value
        train["options"] = [options_id, 0]
    return prompt


def train_setting(prompt: dict, name: str, node_id: str = "train"):
    """A setting of the Train node `node_id` wherever it is (Train node or its Options node); KeyError if unset."""
    if name in TRAIN_INPUTS:
        return prompt[node_id]["inputs"][name]
    return prompt[node_id + "_options"]["inputs"][name]
