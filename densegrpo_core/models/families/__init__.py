"""Model families as records: each family (SD3/SD3.5, FLUX.1, FLUX.2, Chroma, Qwen-Image, Z-Image, the toy) says
in one `ModelFamily` what the rest of the code needs — LoRA target presets for ComfyUI's and diffusers' module
names, the block lists to checkpoint, default shift / CFG / guidance, the diffusers pipeline classes it covers and
how their pieces are encoded and wrapped, the ComfyUI model classes it covers and the name of the hook that makes
ComfyUI's network trainable.

Lookups raise a ValueError naming the known families for a model no family covers: never a silent fallback.
Adding a family: one module here with its record, and one line in FAMILIES.
"""

from __future__ import annotations

from .chroma import CHROMA
from .flux import FLUX
from .flux2 import FLUX2, FLUX2_KLEIN
from .qwen_image import QWEN_IMAGE
from .record import IMPLEMENTATIONS, DiffusersHooks, Implementation, ModelFamily
from .sd3 import SD3
from .toy import TOY
from .z_image import Z_IMAGE

FAMILIES: dict[str, ModelFamily] = {
    f.name: f for f in (TOY, SD3, FLUX, FLUX2, FLUX2_KLEIN, CHROMA, Z_IMAGE, QWEN_IMAGE)
}

__all__ = [
    "CHROMA",
    "FAMILIES",
    "FLUX",
    "FLUX2",
    "FLUX2_KLEIN",
    "QWEN_IMAGE",
    "SD3",
    "TOY",
    "Z_IMAGE",
    "IMPLEMENTATIONS",
    "DiffusersHooks",
    "Implementation",
    "ModelFamily",
    "get_family",
    "family_for_diffusers_pipeline",
    "family_for_comfy_model",
    "target_presets",
    "preset_implementations",
    "block_list_names",
]


def _known(what: str) -> str:
    rows = [f"{f.name} ({', '.join(getattr(f, what))})" for f in FAMILIES.values() if getattr(f, what)]
    return "; ".join(rows)


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_diffusers_pipeline(class_name: str) -> ModelFamily:
    """The family whose diffusers pipeline classes include `class_name` (model_index.json `_class_name`)."""
    for family in FAMILIES.values():
        if class_name in family.diffusers_pipelines:
            return family
    raise ValueError(
        f"unsupported pipeline class {class_name!r}: no model family covers this diffusers pipeline; known families: "
        f"{_known('diffusers_pipelines')}"
    )


def family_for_comfy_model(model) -> ModelFamily:
    """The family whose ComfyUI model classes include the class of `model` (a comfy.model_base.BaseModel, or
    its class name)."""
    class_name = model if isinstance(model, str) else type(model).__name__
    for family in FAMILIES.values():
        if class_name in family.comfy_models:
            return family
    raise ValueError(
        f"unsupported ComfyUI model class {class_name!r}: no model family covers it; known families: "
        f"{_known('comfy_models')}"
    )


def target_presets() -> dict[str, str]:
    """Every LoRA target preset name → its module-name regex: the core's, then ComfyUI's, then diffusers'."""
    presets: dict[str, str] = {}
    for kind in IMPLEMENTATIONS:
        for family in FAMILIES.values():
            impl = family.implementation(kind)
            if impl is not None:
                presets[impl.preset] = impl.targets
    return presets


def preset_implementations() -> dict[str, Implementation]:
    """Every LoRA target preset name → the implementation that defines it (its block lists, unused outputs)."""
    return {
        impl.preset: impl
        for kind in IMPLEMENTATIONS
        for family in FAMILIES.values()
        if (impl := family.implementation(kind)) is not None
    }


def block_list_names() -> tuple[str, ...]:
    """Every block-list attribute name the families checkpoint: the core's, then ComfyUI's, then diffusers'."""
    names: dict[str, None] = {}
    for kind in IMPLEMENTATIONS:
        for family in FAMILIES.values():
            impl = family.implementation(kind)
            if impl is not None:
                names.update(dict.fromkeys(impl.block_lists))
    return tuple(names)
