"""A LoRA the headless trainer writes for a diffusers FLUX.2 transformer loads on ComfyUI's own Flux2 model with
ComfyUI's LoRA loader (LoraLoaderModelOnly's `comfy.sd.load_lora_for_models`) with no "not loaded" key, and gives
the diffusers model's output with the LoRA (comfy_lora_worker.py compares ComfyUI's denoised prediction x − σ·v
with the one the core's FLUX.2 velocity gives).

ComfyUI cannot load a diffusers FLUX.2 state dict through UNETLoader, nor detect tiny widths from an original
one, so the worker builds ComfyUI's Flux2 from the converted weights (flux2_from_diffusers.py)."""

import os
import sys

import harness
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(harness.HERE))
sys.path.insert(0, harness.REPO_ROOT)
from diffusers_tiny_flux2 import save_tiny_flux2  # noqa: E402

from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy_result(tmp_path_factory):
    import safetensors.torch

    path, reason = harness.find_comfyui()
    if path is None:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("flux2lora")
    pipe, _, _ = load_pipeline(save_tiny_flux2(str(tmp / "flux2")), train_prompts=["a red cube"], height=16, width=16)
    transformer = pipe.lora_module
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in transformer.state_dict().items()}, str(tmp / "transformer.safetensors")
    )
    g = torch.Generator().manual_seed(0)
    x, tau = torch.randn((1, 128, 4, 4), generator=g), torch.tensor([0.7])
    cond = pipe.encode(["a red cube"])  # prompt_embeds (1, 512, 24)

    def denoised():
        with torch.no_grad():
            return x - tau * pipe.model(x, tau, cond)  # ComfyUI's denoised prediction (CONST)

    base = denoised()
    lora.inject_lora(transformer, pipe.arch, rank=4, alpha=8.0)  # α ≠ r: a wrong scale would show
    with torch.no_grad():
        for i, p in enumerate(lora.lora_parameters(transformer)):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    lora.save_lora(str(tmp / "lora.safetensors"), transformer, prefix=pipe.lora_prefix)  # as the trainer exports
    guidance = torch.tensor([pipe.model.guidance])
    torch.save(
        {
            "x": x,
            "sigma": tau,
            "cond": {"c_crossattn": cond["prompt_embeds"], "guidance": guidance},
            "expected": denoised(),
            "base": base,
        },
        str(tmp / "inputs.pt"),
    )
    spec = {name: str(tmp / f"{name}.{ext}") for name, ext in [("lora", "safetensors"), ("inputs", "pt")]}
    spec.update(
        transformer=str(tmp / "transformer.safetensors"),
        out=str(tmp / "out.json"),
        builder=os.path.join(harness.HERE, "flux2_from_diffusers.py") + ":build",
    )
    return {
        **harness.run_lora_worker(tmp, spec),
        "keys": sorted(safetensors.torch.load_file(str(tmp / "lora.safetensors"))),
    }


def test_comfyuis_flux2_with_the_converted_weights_gives_the_diffusers_output(comfy_result):
    assert comfy_result["model"] == "Flux2"
    assert comfy_result["base_diff"] < 1e-4


def test_comfyui_loads_every_lora_key(comfy_result):
    assert any(k.startswith("diffusion_model.single_blocks.0.linear1.") for k in comfy_result["keys"])
    assert any(k.startswith("transformer.transformer_blocks.0.attn.to_q.") for k in comfy_result["keys"])
    assert comfy_result["not_loaded"] == []


def test_comfyui_output_with_the_lora_matches_diffusers_with_the_lora(comfy_result):
    assert comfy_result["lora_effect"] > 1e-3  # the LoRA changes the output
    assert comfy_result["max_abs_diff"] < 1e-4
