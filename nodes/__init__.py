"""ComfyUI nodes of DenseGRPO: a thin skin over `densegrpo_core` (V1 registration, stable node ids)."""

from __future__ import annotations

from . import dense_reward_nodes, psi_nodes, reward_nodes, routes, sampler_nodes, train_nodes

_MODULES = (psi_nodes, sampler_nodes, reward_nodes, dense_reward_nodes, train_nodes)


def _collect():
    classes, names = {}, {}
    for module in _MODULES:
        for node_id, (cls, display) in module.NODES.items():
            classes[node_id], names[node_id] = cls, display
    return classes, names


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _collect()
if routes.register_with_comfyui():  # inside ComfyUI: HTTP routes and the reward_models folder
    reward_nodes.register_folder()
