"""A LoRA the headless trainer writes for a diffusers SD3.5 transformer loads through ComfyUI's own loaders
(UNETLoader's diffusers-format detection, LoraLoaderModelOnly's key map) with no "not loaded" key, and gives
the diffusers model's output with the LoRA (comfy_lora_worker.py compares ComfyUI's denoised prediction
x − σ·v with the one diffusers' velocity gives)."""

import os
import sys

import harness
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(harness.HERE))
sys.path.insert(0, harness.REPO_ROOT)
from diffusers_tiny import tiny_sd35_transformer  # noqa: E402

from densegrpo_core.models import lora  # noqa: E402


@pytest.fixture(scope="module")
def comfy_result(tmp_path_factory):
    import safetensors.torch

    tmp = tmp_path_factory.mktemp("difflora")
    transformer = tiny_sd35_transformer(seed=0)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in transformer.state_dict().items()}, str(tmp / "transformer.safetensors")
    )
    g = torch.Generator().manual_seed(0)
    x, tau = torch.randn((1, 16, 8, 8), generator=g), torch.tensor([0.7])
    context, pooled = torch.randn((1, 12, 64), generator=g), torch.randn((1, 64), generator=g)

    def v():
        with torch.no_grad():
            v = transformer(
                hidden_states=x,
                timestep=tau * 1000,
                encoder_hidden_states=context,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        return x - tau * v  # ComfyUI's denoised prediction (CONST)

    base = v()
    lora.inject_lora(transformer, "diffusers_sd3", rank=4, alpha=8.0)  # α ≠ r: a wrong scale would show
    with torch.no_grad():
        for i, p in enumerate(lora.lora_parameters(transformer)):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora.save_lora(str(tmp / "lora.safetensors"), transformer, prefix="transformer.")
    torch.save(
        {"x": x, "sigma": tau, "cond": {"c_crossattn": context, "y": pooled}, "expected": v(), "base": base},
        str(tmp / "inputs.pt"),
    )
    spec = {name: str(tmp / f"{name}.{ext}") for name, ext in [("lora", "safetensors"), ("inputs", "pt")]}
    spec.update(transformer=str(tmp / "transformer.safetensors"), out=str(tmp / "out.json"))
    return harness.run_lora_worker(tmp, spec)


def test_comfyui_detects_the_diffusers_transformer_as_sd3_with_the_same_output(comfy_result):
    assert comfy_result["model"] == "SD3"
    assert comfy_result["base_diff"] < 1e-4


def test_comfyui_loads_every_lora_key(comfy_result):
    assert comfy_result["not_loaded"] == []


def test_comfyui_output_with_the_lora_matches_diffusers_with_the_lora(comfy_result):
    assert comfy_result["lora_effect"] > 1e-3  # the LoRA changes the output
    assert comfy_result["max_abs_diff"] < 1e-4
