"""A LoRA the headless trainer writes for a diffusers Z-Image transformer (diffusers module names, prefix
"transformer.") loads onto ComfyUI's own class of the same model (Lumina2 / NextDiT) through LoraLoaderModelOnly's
key map (comfy/lora.py, Lumina2 branch: comfy.utils.z_image_to_diffusers puts to_q/to_k/to_v into slices of
the fused qkv) with no "not loaded" key, and gives the diffusers model's output with the LoRA.

ComfyUI 0.8.0 detects a diffusers Z-Image state dict as Lumina 2 but does not convert its keys, and its
detection hard-codes Z-Image's widths, so the worker builds ComfyUI's class and converts the weights with
ComfyUI's own key map (tests/comfyui/test_nodes/tiny_z_image.py `comfy_model_from_diffusers`). The transformer
is 1024 wide: ComfyUI's NextDiT timestep MLP has min(dim, 1024) hidden units where diffusers has 1024."""

import os
import sys

import harness
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(harness.HERE))
sys.path.insert(0, harness.REPO_ROOT)
from diffusers_tiny_z_image import CAP_DIM, tiny_z_image_transformer  # noqa: E402

from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families.z_image import ZImageVelocity  # noqa: E402


@pytest.fixture(scope="module")
def comfy_result(tmp_path_factory):
    import safetensors.torch

    tmp = tmp_path_factory.mktemp("zimagelora")
    transformer = tiny_z_image_transformer(seed=0, comfy_compatible=True)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in transformer.state_dict().items()}, str(tmp / "transformer.safetensors")
    )
    g = torch.Generator().manual_seed(0)
    x, tau = torch.randn((1, 16, 8, 8), generator=g), torch.tensor([0.7])
    caption = torch.randn((1, 11, CAP_DIM), generator=g)  # 11 tokens: padded to 32 by both implementations
    cond = {"prompt_embeds": caption, "prompt_mask": torch.ones((1, 11), dtype=torch.bool)}
    velocity = ZImageVelocity(transformer)

    def denoised():
        with torch.no_grad():
            return x - tau * velocity(x, tau, cond)  # ComfyUI's denoised prediction (CONST)

    base = denoised()
    lora.inject_lora(transformer, "diffusers_z_image", rank=4, alpha=8.0)  # α ≠ r: a wrong scale would show
    with torch.no_grad():
        for i, p in enumerate(lora.lora_parameters(transformer)):
            p.copy_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora.save_lora(str(tmp / "lora.safetensors"), transformer, prefix="transformer.")
    torch.save(
        {
            "x": x,
            "sigma": tau,
            "cond": {"c_crossattn": caption, "num_tokens": 11},
            "expected": denoised(),
            "base": base,
        },
        str(tmp / "inputs.pt"),
    )
    builder = os.path.join(harness.HERE, "test_nodes", "tiny_z_image.py")
    spec = {name: str(tmp / f"{name}.{ext}") for name, ext in [("lora", "safetensors"), ("inputs", "pt")]}
    spec.update(
        transformer=str(tmp / "transformer.safetensors"),
        out=str(tmp / "out.json"),
        builder=f"{builder}:comfy_model_from_diffusers",
    )
    return harness.run_lora_worker(tmp, spec)


def test_comfyuis_class_with_the_converted_weights_gives_the_diffusers_output(comfy_result):
    assert comfy_result["model"] == "Lumina2"
    assert comfy_result["base_diff"] < 1e-4


def test_comfyui_loads_every_lora_key(comfy_result):
    assert comfy_result["not_loaded"] == []


def test_comfyui_output_with_the_lora_matches_diffusers_with_the_lora(comfy_result):
    assert comfy_result["lora_effect"] > 1e-3  # the LoRA changes the output
    assert comfy_result["max_abs_diff"] < 1e-4
