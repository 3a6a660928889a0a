"""What leaves the server (HTTP answers, websocket events) names files relative to ComfyUI's folders.

`public_view(value, roots)` copies a JSON-able value: a string that is an absolute path under one of the
roots ({"models/loras": "/…/models/loras", "output": "/…/output", ...}) becomes that path relative to the
root ("densegrpo/x_00001.safetensors": the name LoraLoaderModelOnly lists), an absolute path elsewhere
becomes its base name, and a root inside a longer text (an error message) is replaced by its label.
Pure Python; `comfy_roots()` reads the roots from ComfyUI's folder_paths.
"""

from __future__ import annotations

import os

HIDDEN_KEYS = frozenset({"traceback"})  # stays in job.json on disk and in the server log


def _rel(path: str, root: str) -> str | None:
    root = os.path.normpath(root)
    path = os.path.normpath(path)
    if path == root:
        return ""
    if path.startswith(root + os.sep):
        return path[len(root) + 1 :].replace(os.sep, "/")
    return None


def public_string(text: str, roots: dict[str, str]) -> str:
    ordered = sorted(roots.items(), key=lambda kv: len(kv[1]), reverse=True)  # the deepest root first
    if os.path.isabs(text) and "\n" not in text:
        for _, root in ordered:
            rel = _rel(text, root)
            if rel is not None:
                return rel
        return os.path.basename(os.path.normpath(text))
    for label, root in ordered:
        text = text.replace(os.path.normpath(root) + os.sep, f"{label}/").replace(os.path.normpath(root), label)
    return text


def public_view(value, roots: dict[str, str]):
    if isinstance(value, str):
        return public_string(value, roots)
    if isinstance(value, dict):
        return {k: public_view(v, roots) for k, v in value.items() if k not in HIDDEN_KEYS}
    if isinstance(value, (list, tuple)):
        return [public_view(v, roots) for v in value]
    return value


def comfy_roots() -> dict[str, str]:
    """Label → folder: the LoRA folders, output, temp, input, models and ComfyUI's base directory."""
    import folder_paths

    roots = {}
    for i, path in enumerate(folder_paths.get_folder_paths("loras")):
        roots["models/loras" if i == 0 else f"models/loras[{i}]"] = path
    roots.update(
        {
            "output": folder_paths.get_output_directory(),
            "temp": folder_paths.get_temp_directory(),
            "input": folder_paths.get_input_directory(),
            "models": folder_paths.models_dir,
            "ComfyUI": folder_paths.base_path,
        }
    )
    return {k: os.path.abspath(v) for k, v in roots.items() if v}
