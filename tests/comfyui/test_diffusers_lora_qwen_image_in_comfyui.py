"""A LoRA the headless trainer writes for a diffusers Qwen-Image transformer (`lora_prefix="transformer."`, diffusers
module names) loads onto ComfyUI's own QwenImage class through LoraLoaderModelOnly's key map (comfy/lora.py
`model_lora_keys_unet` maps `transformer.<path>` for QwenImage) with no "not loaded" key, and gives the diffusers
model's output with the LoRA. ComfyUI's detection hard-codes Qwen-Image's widths, so the worker builds ComfyUI's class
at the tiny widths and loads the diffusers weights as UNETLoader does (tiny_qwen_image.comfy_from_diffusers);
comfy_lora_worker.py compares ComfyUI's denoised prediction x − σ·v (5-D latents (1, 16, 1, h, w), as ComfyUI's
sampler holds them) with the one the family's diffusers velocity gives."""

import os
import sys

import harness
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(harness.HERE))
sys.path.insert(0, harness.REPO_ROOT)
from diffusers_tiny_qwen_image import tiny_qwen_image_transformer  # noqa: E402

from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families.qwen_image import QwenImageVelocity  # noqa: E402

BUILDER = os.path.join(harness.HERE, "test_nodes", "tiny_qwen_image.py") + ":comfy_from_diffusers"


@pytest.fixture(scope="module")
def comfy_result(tmp_path_factory):
    import safetensors.torch

    tmp = tmp_path_factory.mktemp("qwenlora")
    transformer = tiny_qwen_image_transformer(seed=0)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in transformer.state_dict().items()}, str(tmp / "transformer.safetensors")
    )
    g = torch.Generator().manual_seed(0)
    x, tau = torch.randn((1, 16, 8, 8), generator=g), torch.tensor([0.7])
    context = torch.randn((1, 12, 32), generator=g)
    velocity = QwenImageVelocity(transformer, (8, 8))
    cond = {"prompt_embeds": context, "prompt_embeds_mask": torch.ones(1, 12, dtype=torch.long)}

    def denoised():
        with torch.no_grad():
            return (x - tau * velocity(x, tau, cond))[:, :, None]  # ComfyUI's CONST prediction, (1, 16, 1, h, w)

    base = denoised()
    lora.inject_lora(transformer, "diffusers_qwen_image", rank=4, alpha=8.0)  # α ≠ r: a wrong scale would show
    with torch.no_grad():
        for i, p in enumerate(lora.lora_parameters(transformer)):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora.save_lora(str(tmp / "lora.safetensors"), transformer, prefix="transformer.")
    torch.save(
        {"x": x[:, :, None], "sigma": tau, "cond": {"c_crossattn": context}, "expected": denoised(), "base": base},
        str(tmp / "inputs.pt"),
    )
    spec = {name: str(tmp / f"{name}.{ext}") for name, ext in [("lora", "safetensors"), ("inputs", "pt")]}
    spec.update(transformer=str(tmp / "transformer.safetensors"), out=str(tmp / "out.json"), builder=BUILDER)
    return harness.run_lora_worker(tmp, spec)


def test_comfyui_builds_the_diffusers_transformer_as_qwen_image_with_the_same_output(comfy_result):
    assert comfy_result["model"] == "QwenImage"
    assert comfy_result["base_diff"] < 1e-4


def test_comfyui_loads_every_lora_key(comfy_result):
    assert comfy_result["not_loaded"] == []


def test_comfyui_output_with_the_lora_matches_diffusers_with_the_lora(comfy_result):
    assert comfy_result["lora_effect"] > 1e-3  # the LoRA changes the output
    assert comfy_result["max_abs_diff"] < 1e-4
