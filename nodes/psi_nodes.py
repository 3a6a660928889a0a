"""ψ(t) nodes: the DENSEGRPO_PSI socket made from a uniform value, a list, or a psi.json file."""

from __future__ import annotations

import os

from densegrpo_core.method.schedule import FLOW_GRPO_NOISE_LEVEL, Psi

from .comfy_bridge import input_error
from .sockets import PSI_TOOLTIP, PSI_TYPE


def psi_folders() -> list[str]:
    """Where psi.json files are looked up: models/densegrpo/ and output/densegrpo/psi/ (calibration saves there)."""
    import folder_paths

    return [
        os.path.join(folder_paths.models_dir, "densegrpo"),
        os.path.join(folder_paths.get_output_directory(), "densegrpo", "psi"),
    ]


def list_psi_files(folders: list[str]) -> list[str]:
    """Relative paths of the .json files under the folders (first folder wins on a name clash), sorted."""
    names = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            for f in files:
                if f.lower().endswith(".json"):
                    rel = os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
                    if rel not in names:
                        names.append(rel)
    return sorted(names)


def find_psi_file(name: str, folders: list[str], node: str) -> str:
    """The full path of a listed ψ file; never a path outside the folders."""
    for folder in folders:
        path = os.path.realpath(os.path.join(folder, name))
        if os.path.commonpath([path, os.path.realpath(folder)]) == os.path.realpath(folder) and os.path.isfile(path):
            return path
    raise input_error(node, "psi_file", f"{name!r} was not found in {' or '.join(folders)}")


class PsiNode:
    """What the ψ nodes share: their category and their DENSEGRPO_PSI output."""

    CATEGORY = "DenseGRPO/psi"
    FUNCTION = "execute"
    RETURN_TYPES = (PSI_TYPE,)
    RETURN_NAMES = ("psi",)
    OUTPUT_TOOLTIPS = (PSI_TOOLTIP,)


class PsiUniform(PsiNode):
    DESCRIPTION = "ψ(t) = a at every step: Flow-GRPO's noise level (a = 0.7 in the paper)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "a": (
                    "FLOAT",
                    {
                        "default": FLOW_GRPO_NOISE_LEVEL,
                        "min": 0.0,
                        "max": 5.0,
                        "step": 0.01,
                        "tooltip": "noise level a; 0 makes every step deterministic (Euler ODE)",
                    },
                )
            }
        }

    def execute(self, a):
        return (Psi.uniform(float(a), 1),)


class PsiFromList(PsiNode):
    DESCRIPTION = "ψ(t) from comma-separated values, one per sampling step (first value = first, noisiest step)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "values": (
                    "STRING",
                    {
                        "default": "0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7",
                        "multiline": False,
                        "tooltip": "one non-negative number per step, comma separated",
                    },
                )
            }
        }

    def execute(self, values):
        try:
            return (Psi.parse(values),)
        except ValueError as e:
            raise input_error("DenseGRPO ψ From List", "values", str(e)) from None


class PsiLoad(PsiNode):
    DESCRIPTION = (
        "Load a psi.json (written by DenseGRPO Calibrate or `python -m densegrpo_core calibrate`) from "
        "models/densegrpo/ or output/densegrpo/psi/."
    )
    RETURN_TYPES = (PSI_TYPE, "STRING")
    RETURN_NAMES = ("psi", "values")
    OUTPUT_TOOLTIPS = (PSI_TOOLTIP, "the ψ values as text")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "psi_file": (
                    list_psi_files(psi_folders()) or ["(no psi files found)"],
                    {"tooltip": "a psi.json in models/densegrpo/ or output/densegrpo/psi/"},
                )
            }
        }

    @classmethod
    def IS_CHANGED(cls, psi_file):
        try:
            return os.path.getmtime(find_psi_file(psi_file, psi_folders(), "DenseGRPO Load ψ"))
        except ValueError:
            return float("nan")

    def execute(self, psi_file):
        node = "DenseGRPO Load ψ"
        path = find_psi_file(psi_file, psi_folders(), node)
        try:
            psi = Psi.load(path)
        except (ValueError, FileNotFoundError) as e:
            raise input_error(node, "psi_file", str(e)) from None
        return (psi, ", ".join(f"{v:.4g}" for v in psi.values))


NODES = {
    "DenseGRPO_PsiUniform": (PsiUniform, "DenseGRPO ψ Uniform (Flow-GRPO)"),
    "DenseGRPO_PsiFromList": (PsiFromList, "DenseGRPO ψ From List"),
    "DenseGRPO_PsiLoad": (PsiLoad, "DenseGRPO Load ψ"),
}
