"""Model families as records (densegrpo_core.models.families): complete records, lookups by diffusers pipeline
class and by ComfyUI model class that name the known families for an unknown model, and the LoRA presets and
checkpointed block lists read from the records."""

import json
import re

import pytest

from densegrpo_core.models import families, lora
from densegrpo_core.models.diffusers_pipeline import PIPELINE_KINDS, pipeline_kind
from densegrpo_core.models.families import ModelFamily
from densegrpo_core.models.families.flux import FLUX as FLUX_FAMILY
from densegrpo_core.models.families.sd3 import SD3 as SD3_FAMILY
from densegrpo_core.models.families.toy import TOY as TOY_FAMILY
from densegrpo_core.resources import memory


class SD3:  # stands in for comfy.model_base.SD3 (only the class name counts)
    pass


class Flux:  # stands in for comfy.model_base.Flux
    pass


class HiDream:  # a ComfyUI model class no family covers
    pass


@pytest.mark.parametrize("family", list(families.FAMILIES.values()), ids=list(families.FAMILIES))
def test_every_family_record_is_complete(family):
    assert isinstance(family, ModelFamily) and families.FAMILIES[family.name] is family and family.description
    impls = [family.implementation(kind) for kind in families.IMPLEMENTATIONS]
    assert any(impls), "a family has at least one implementation"
    for impl in filter(None, impls):
        assert impl.preset and impl.block_lists and all(impl.block_lists)
        re.compile(impl.targets)
    if family.diffusers_pipelines:  # covers diffusers folders: says how to load and encode them
        assert family.diffusers is not None and family.diffusers_hooks is not None
        assert isinstance(family.default_shift, float) and isinstance(family.default_cfg, float)
        assert family.uses_cfg or family.default_guidance is not None
    if family.comfy_models:  # covers ComfyUI models: has ComfyUI LoRA targets and defaults
        assert family.comfy is not None
        assert isinstance(family.default_shift, float) and isinstance(family.default_cfg, float)
    if family.comfy_patch:
        from nodes.comfy_training import COMFY_PATCHES

        assert callable(COMFY_PATCHES[family.comfy_patch])


def test_an_unknown_diffusers_pipeline_class_names_the_known_families():
    with pytest.raises(ValueError, match="'StableDiffusionXLPipeline'.*sd3 \\(StableDiffusion3Pipeline\\).*flux"):
        families.family_for_diffusers_pipeline("StableDiffusionXLPipeline")


def test_an_unknown_pipeline_class_in_a_folder_names_the_known_families(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    with pytest.raises(ValueError, match="unsupported pipeline class 'PixArtSigmaPipeline'.*known families: sd3"):
        pipeline_kind(str(tmp_path))


def test_an_unknown_comfy_model_class_names_the_known_families():
    with pytest.raises(ValueError, match="ComfyUI model class 'HiDream'.*sd3 \\(SD3\\); flux \\(Flux\\)"):
        families.family_for_comfy_model(HiDream())


def test_an_unknown_comfy_model_is_a_node_input_error_not_sd3_targets():
    from nodes.comfy_bridge import NodeInputError
    from nodes.comfy_training import comfy_family

    with pytest.raises(NodeInputError, match="input 'model' cannot be trained.*'HiDream'.*known families"):
        comfy_family(HiDream(), "DenseGRPO Train")


def test_sd3_lookups_return_the_sd3_record():
    assert families.family_for_diffusers_pipeline("StableDiffusion3Pipeline") is SD3_FAMILY
    assert families.family_for_comfy_model(SD3()) is SD3_FAMILY
    assert (SD3_FAMILY.comfy.preset, SD3_FAMILY.diffusers.preset) == ("mmdit", "diffusers_sd3")


def test_flux_lookups_return_the_flux_record():
    assert families.family_for_diffusers_pipeline("FluxPipeline") is FLUX_FAMILY
    assert families.family_for_comfy_model(Flux()) is FLUX_FAMILY
    assert families.family_for_comfy_model("Flux") is FLUX_FAMILY
    assert (FLUX_FAMILY.comfy.preset, FLUX_FAMILY.diffusers.preset) == ("flux", "diffusers_flux")


def test_a_subclass_name_is_not_silently_covered():
    """Only the class names a record lists: ComfyUI's ChromaRadiance (a subclass of Chroma) is another
    network, not Chroma, and no FLUX.1 record claims a name that merely starts with "Flux"."""
    for name in ("ChromaRadiance", "FluxSomething"):
        with pytest.raises(ValueError, match="known families"):
            families.family_for_comfy_model(name)


def test_the_lora_presets_come_from_the_records():
    from_records = {
        impl.preset: impl.targets
        for family in families.FAMILIES.values()
        for impl in (family.core, family.comfy, family.diffusers)
        if impl is not None
    }
    assert lora.TARGET_PRESETS == from_records
    assert list(lora.TARGET_PRESETS) == [
        "toy",
        "mmdit",
        "flux",
        "chroma",
        "nextdit",
        "qwen_image",
        "diffusers_sd3",
        "diffusers_flux",
        "diffusers_flux2",
        "diffusers_chroma",
        "diffusers_z_image",
        "diffusers_qwen_image",
    ]
    assert lora.TARGET_PRESETS["toy"] == TOY_FAMILY.core.targets


def test_the_checkpointed_block_lists_come_from_the_records():
    from_records = {
        name for f in families.FAMILIES.values() for i in (f.core, f.comfy, f.diffusers) if i for name in i.block_lists
    }
    assert set(memory.BLOCK_LIST_NAMES) == from_records | {"layers"}


def test_the_diffusers_pipeline_classes_come_from_the_records():
    assert PIPELINE_KINDS == {
        "StableDiffusion3Pipeline": "sd3",
        "FluxPipeline": "flux",
        "Flux2Pipeline": "flux2",
        "Flux2KleinPipeline": "flux2_klein",
        "ChromaPipeline": "chroma",
        "ZImagePipeline": "z_image",
        "QwenImagePipeline": "qwen_image",
    }


def test_records_are_frozen():
    with pytest.raises(AttributeError):
        SD3_FAMILY.default_cfg = 7.0
