"""ComfyUI's own Flux class trained by the private copy (in process, skipped without $COMFYUI_PATH):
its blocks add residuals in place and use a rotary-embedding kernel without backward, so the copy runs them in
a differentiable form while gradients are recorded, and exactly as ComfyUI does otherwise.

These tests import ComfyUI's modules into the test process, so they need ComfyUI's packages. Run from the
project's venv (`./run test tests/comfyui`), where those are missing, the module runs itself again under
ComfyUI's python (harness.comfy_python) and that run must pass."""

import importlib.util
import os
import re
import subprocess
import sys

import harness
import pytest
import torch

pytestmark = pytest.mark.comfyui
# ComfyUI's own requirements (einops: comfy.utils imports it) importable in this python: the tests run here
IN_PROCESS = importlib.util.find_spec("einops") is not None
needs_comfy_packages = pytest.mark.skipif(
    not IN_PROCESS, reason="ComfyUI's packages are not importable here: the test below runs them in ComfyUI's python"
)


@pytest.mark.skipif(IN_PROCESS, reason="the tests of this module run in this process")
def test_this_module_passes_in_comfyuis_python():
    comfyui_path, reason = harness.find_comfyui()
    python = harness.comfy_python(comfyui_path)
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        pytest.skip(f"this python lacks ComfyUI's packages and no other was found ({reason or 'set COMFYUI_PYTHON'})")
    out = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
        cwd=harness.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed, 1 skipped in ", summary), summary  # every test ran there but this one


@pytest.fixture(scope="module")
def comfy_importable():
    """ComfyUI's modules importable, on the CPU."""
    sys.path.append(os.path.abspath(os.environ["COMFYUI_PATH"]))  # after the repository: our `nodes` package
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


@pytest.fixture(scope="module")
def tiny_flux(comfy_importable):
    """A FLUX.1-dev twin with 1 double and 1 single block (ComfyUI detects Flux with 24 heads of 128, so the
    width is the real 3072), random bf16 weights, loaded by ComfyUI's own loader."""
    import comfy.ops
    import comfy.sd
    from comfy.ldm.flux.model import Flux

    net = Flux(
        in_channels=16,
        out_channels=16,
        vec_in_dim=768,
        context_in_dim=4096,
        hidden_size=3072,
        mlp_ratio=4.0,
        num_heads=24,
        depth=1,
        depth_single_blocks=1,
        axes_dim=[16, 56, 56],
        theta=10000,
        patch_size=2,
        qkv_bias=True,
        guidance_embed=True,
        txt_ids_dims=[],
        dtype=torch.bfloat16,
        device="meta",
        operations=comfy.ops.disable_weight_init,
    ).to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for _, p in net.named_parameters():
            p.normal_(0.0, 0.02)
    sd = dict(net.state_dict())
    del net
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16})


def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(
        x=torch.randn(1, 16, 8, 8, generator=g),
        t=torch.tensor([0.6]),
        cond=dict(
            c_crossattn=torch.randn(1, 8, 4096, generator=g),
            y=torch.randn(1, 768, generator=g),
            guidance=torch.tensor([3.5]),
        ),
    )


def lora_grads(base, checkpointing: bool):
    from densegrpo_core.models.lora import inject_lora, lora_parameters
    from densegrpo_core.resources.memory import enable_gradient_checkpointing

    dm = base.diffusion_model
    if not any("lora_" in n for n, _ in dm.named_parameters()):
        inject_lora(dm, "flux", rank=2, alpha=2.0)
        with torch.no_grad():
            for p in lora_parameters(dm):
                p.normal_(0, 0.1)
    if checkpointing:
        enable_gradient_checkpointing(dm)
    i = inputs()
    out = base.apply_model(i["x"], i["t"], transformer_options={}, **i["cond"])
    return torch.autograd.grad(out.square().mean(), lora_parameters(dm))


@needs_comfy_packages
def test_the_private_copy_of_a_flux_model_computes_exactly_as_comfyui_without_gradients(tiny_flux):
    from nodes.comfy_training import private_base_model

    private = private_base_model(tiny_flux, "test")
    i = inputs()
    with torch.no_grad():
        ours = private.apply_model(i["x"], i["t"], transformer_options={}, **i["cond"])
        theirs = tiny_flux.model.apply_model(i["x"], i["t"], transformer_options={}, **i["cond"])
    assert torch.equal(ours, theirs)


@needs_comfy_packages
def test_a_flux_lora_trains_through_comfyuis_flux_with_and_without_checkpointing_to_the_same_gradients(tiny_flux):
    from nodes.comfy_training import private_base_model

    private = private_base_model(tiny_flux, "test")
    plain = lora_grads(private, checkpointing=False)
    checkpointed = lora_grads(private, checkpointing=True)
    assert all(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@needs_comfy_packages
def test_the_train_nodes_guidance_sets_the_flux_guidance_embedding_and_leaves_sd3_alone(comfy_importable):
    from test_nodes import tiny_families

    from nodes.comfy_training import with_guidance

    flux, sd3 = tiny_families.get("flux").model, tiny_families.get("sd3").model
    cond = [[torch.zeros(1, 8, 4096), {"pooled_output": torch.zeros(1, 768)}]]
    assert with_guidance(flux, cond, -1.0)[0][1]["guidance"] == 3.5  # the family's default, as FluxGuidance
    assert with_guidance(flux, cond, 5.0)[0][1]["guidance"] == 5.0
    assert "guidance" not in with_guidance(sd3, cond, 5.0)[0][1]
    assert "guidance" not in cond[0][1]  # the input conditioning is not changed
