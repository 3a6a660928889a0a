"""A LoRA the headless trainer writes for a diffusers Chroma transformer (`transformer.` diffusers module names)
loads onto ComfyUI's own Chroma class through LoraLoaderModelOnly's key map — model_base.Chroma subclasses Flux,
so comfy/lora.py's FLUX branch maps the diffusers q/k/v (and the single blocks' proj_mlp) onto slices of the fused
weights — with no "not loaded" key, and gives the diffusers model's output with the LoRA."""

import os
import sys

import harness
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(harness.HERE))
sys.path.insert(0, harness.REPO_ROOT)
from diffusers_tiny_chroma import COMFY_DEPTHS, tiny_chroma_transformer  # noqa: E402

from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families import CHROMA  # noqa: E402
from densegrpo_core.models.families.flux import pack_latents, unpack_latents  # noqa: E402


@pytest.fixture(scope="module")
def comfy_result(tmp_path_factory):
    import safetensors.torch

    tmp = tmp_path_factory.mktemp("chromalora")
    transformer = tiny_chroma_transformer(0, *COMFY_DEPTHS)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in transformer.state_dict().items()}, str(tmp / "transformer.safetensors")
    )
    g = torch.Generator().manual_seed(0)
    x, tau = torch.randn((1, 16, 8, 8), generator=g), torch.tensor([0.7])
    context = torch.randn((1, 12, 32), generator=g)
    velocity = CHROMA.diffusers_hooks.velocity(transformer, (8, 8), None)
    mask = torch.ones((1, 12))  # every text token attended: ComfyUI's Chroma gets no padding and no mask

    def denoised():
        with torch.no_grad():
            v = velocity(x, tau, {"prompt_embeds": context, "attention_mask": mask})
        return x - tau * v  # ComfyUI's denoised prediction (CONST)

    base = denoised()
    lora.inject_lora(transformer, CHROMA.diffusers.preset, rank=4, alpha=8.0)  # α ≠ r: a wrong scale would show
    with torch.no_grad():
        for i, p in enumerate(lora.lora_parameters(transformer)):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora.save_lora(str(tmp / "lora.safetensors"), transformer, prefix="transformer.")
    cond = {"c_crossattn": context, "guidance": torch.zeros(1)}  # model_base.Chroma.extra_conds: guidance 0
    torch.save({"x": x, "sigma": tau, "cond": cond, "expected": denoised(), "base": base}, str(tmp / "inputs.pt"))
    spec = {
        "transformer": str(tmp / "transformer.safetensors"),
        "lora": str(tmp / "lora.safetensors"),
        "inputs": str(tmp / "inputs.pt"),
        "out": str(tmp / "out.json"),
        "builder": os.path.join(harness.HERE, "chroma_comfy_builder.py") + ":build",
    }
    return harness.run_lora_worker(tmp, spec)


def test_pack_and_unpack_are_inverse():  # the velocity adapter's packing, as ChromaPipeline's
    x = torch.randn((2, 16, 8, 8))
    torch.testing.assert_close(unpack_latents(pack_latents(x), 8, 8), x)


def test_comfyuis_chroma_with_the_converted_weights_gives_the_diffusers_output(comfy_result):
    assert comfy_result["model"] == "Chroma"
    assert comfy_result["base_diff"] < 1e-4


def test_comfyui_loads_every_chroma_lora_key(comfy_result):
    assert comfy_result["not_loaded"] == []


def test_comfyui_chroma_output_with_the_lora_matches_diffusers_with_the_lora(comfy_result):
    assert comfy_result["lora_effect"] > 1e-3  # the LoRA changes the output
    assert comfy_result["max_abs_diff"] < 1e-4
