"""Custom rewards the user installed on purpose: Python files in a folder (ComfyUI: models/reward_models/custom/).

A file offers the functions named in a module-level list `REWARDS = ["score", "other"]`, or else its
top-level `def reward(images, prompts)`. Listing reads the files with `ast` (nothing is imported or run);
`load_reward_file` imports one file by path only when its function is chosen. Choices are written
"<file>.py:<function>". The headless `module:function` path (`load_callable`) is unaffected.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
from typing import Sequence

from .base import CallableReward

DEFAULT_FUNCTION = "reward"
CHOICE_RE = re.compile(r"^(?P<file>[A-Za-z0-9_][A-Za-z0-9_.-]*\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


def reward_functions(path: str) -> list[str]:
    """The reward functions a file offers (see the module docstring); [] for a file that does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return []
    listed, has_default = None, False
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "REWARDS" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):
                listed = [
                    e.value
                    for e in node.value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.isidentifier()
                ]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == DEFAULT_FUNCTION:
            has_default = True
    if listed is not None:
        return list(dict.fromkeys(listed))
    return [DEFAULT_FUNCTION] if has_default else []


def list_custom_rewards(folders: Sequence[str]) -> list[str]:
    """ "<file>.py:<function>" for every reward function of every top-level .py file in the folders (sorted,
    the first folder wins a name that several hold)."""
    out = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.startswith((".", "_")) or not name.endswith(".py") or not os.path.isfile(path):
                continue
            for fn in reward_functions(path):
                choice = f"{name}:{fn}"
                if CHOICE_RE.match(choice) and choice not in out:
                    out.append(choice)
    return out


def resolve_custom_reward(choice: str, folders: Sequence[str]) -> tuple[str, str]:
    """(file path, function name) of a listed choice; ValueError saying why anything else is refused."""
    m = CHOICE_RE.match(str(choice))
    if not m:
        raise ValueError(f"{str(choice)[:200]!r} is not a custom reward choice '<file>.py:<function>'")
    if choice not in list_custom_rewards(folders):
        raise ValueError(
            f"{choice!r} is not an installed custom reward: put a Python file with "
            f"`def reward(images, prompts)` (or a REWARDS = [...] list) in {' or '.join(folders)}"
        )
    for folder in folders:
        path = os.path.join(folder, m["file"])
        if os.path.isfile(path) and m["function"] in reward_functions(path):
            return path, m["function"]
    raise ValueError(f"{choice!r} vanished while loading")  # pragma: no cover - a race with the file system


def load_reward_file(path: str, function: str) -> CallableReward:
    """Import the file by path (as its own module, once per path and content) and wrap `function`."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    mod_name = f"densegrpo_custom_reward_{stem}_{digest}"
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file: report what it raised
            raise ValueError(
                f"custom reward file {os.path.basename(path)} failed to import: {type(e).__name__}: {e}"
            ) from e
        sys.modules[mod_name] = module
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"custom reward file {os.path.basename(path)} has no callable {function!r}")
    return CallableReward(fn, f"{stem}:{function}")
