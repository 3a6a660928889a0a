"""ComfyUI-DenseGRPO: ComfyUI entry point (V1 registration). Heavy imports happen inside the nodes, never here."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the nodes import the headless core `densegrpo_core` that ships in this folder
    sys.path.append(_HERE)  # appended: ComfyUI's own `nodes` module must keep precedence over our `nodes/`

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"  # the front-end extension: the DenseGRPO sidebar panel (plain ES modules, no build step)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
