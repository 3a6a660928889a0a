"""FLUX.2 diffusers pipeline folders (Flux2Pipeline, Flux2KleinPipeline) through the production loader: tiny random
real classes saved with save_pretrained and loaded back with local files only (tests/diffusers_tiny_flux2.py).

16 px images: the tiny VAE has scale 2 and patchifies 2×2, so latents are (128, 4, 4), 16 tokens."""

import json
import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, os.path.dirname(__file__))
import family_checks  # noqa: E402
from diffusers_tiny_flux2 import save_tiny_flux2, save_tiny_flux2_klein  # noqa: E402
from family_checks import lora_vector, train_config  # noqa: E402

from densegrpo_core.method.rollout import ode_sample  # noqa: E402
from densegrpo_core.method.schedule import time_shift  # noqa: E402
from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families import (  # noqa: E402
    FLUX,
    FLUX2,
    FLUX2_KLEIN,
    family_for_comfy_model,
    family_for_diffusers_pipeline,
)
from densegrpo_core.models.families.flux2 import (  # noqa: E402
    comfy_lora_key,
    flux2_shift,
    unpack_latents,
    unpatchify,
)
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402
from densegrpo_core.rewards import get_reward  # noqa: E402
from densegrpo_core.training.trainer import Trainer  # noqa: E402

PROMPTS = ["a red cube", "a blue ball", "a green tree"]
EVAL = ["a cat"]
PIPELINES = {"dev": "Flux2Pipeline", "klein": "Flux2KleinPipeline"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2")
    return {
        "dev": save_tiny_flux2(str(root / "dev")),
        "klein": save_tiny_flux2_klein(str(root / "klein")),
        "klein_distilled": save_tiny_flux2_klein(str(root / "klein_distilled"), is_distilled=True),
    }


def load(folder, **kw):
    return load_pipeline(folder, train_prompts=PROMPTS, eval_prompts=EVAL, height=16, width=16, **kw)


def reference(folders, kind):
    import diffusers

    return getattr(diffusers, PIPELINES[kind]).from_pretrained(folders[kind], local_files_only=True)


def scheduler_config(folder):
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        return json.load(f)


def pipeline_grid(folder, steps):
    """The flow times FLUX.2's pipelines sample on: linspace(1, 1/T, T) shifted with μ(16 tokens, T), then 0."""
    s = torch.linspace(1, 1 / steps, steps, dtype=torch.float64)
    shift = flux2_shift(scheduler_config(folder), (4, 4), steps)
    return torch.cat([time_shift(s, shift), torch.zeros(1, dtype=torch.float64)]).float()


def vae_latents(vae, x):
    """The FLUX.2 model's latents (N, 128, h, w) as the VAE's (N, 32, 2h, 2w): the pipelines' decode path."""
    std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).view(1, -1, 1, 1)
    return unpatchify(x * std + vae.bn.running_mean.view(1, -1, 1, 1))


def velocity(pipe, prompts=("a red cube",)):
    return family_checks.velocity(
        pipe, torch.randn((1, 128, 4, 4), generator=torch.Generator().manual_seed(3)), prompts
    )


# ------------------------------------------------------------------------------------------ records
def test_the_two_pipeline_classes_are_two_records_by_guidance_convention():
    assert family_for_diffusers_pipeline("Flux2Pipeline") is FLUX2
    assert family_for_diffusers_pipeline("Flux2KleinPipeline") is FLUX2_KLEIN
    assert not FLUX2.uses_cfg and FLUX2.default_guidance == 4.0 and FLUX2.default_cfg == 1.0
    assert FLUX2_KLEIN.uses_cfg and FLUX2_KLEIN.default_guidance is None and FLUX2_KLEIN.default_cfg == 4.0
    assert FLUX2.comfy_models == ("Flux2",) and FLUX2_KLEIN.comfy_models == ()


def test_comfyuis_flux2_class_is_the_flux2_record_with_flux1s_module_names():
    assert family_for_comfy_model("Flux2") is FLUX2
    assert FLUX2.comfy.preset == "flux" and FLUX2.comfy.targets == FLUX.comfy.targets


def test_flux2_mu_is_diffusers_compute_empirical_mu():
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    from densegrpo_core.models.families.flux2 import empirical_mu

    for seq, steps in ((16, 3), (4096, 50), (4096, 10), (6000, 28)):
        assert empirical_mu(seq, steps) == pytest.approx(compute_empirical_mu(seq, steps))


# ------------------------------------------------------------------------------------------ loader
def test_flux2_dev_folder_loads_with_the_guidance_embedding_and_no_cfg(folders):
    pipe, train, evals = load(folders["dev"])
    assert (train, evals) == (PROMPTS, EVAL)
    assert pipe.latent_shape == (128, 4, 4) and pipe.arch == "diffusers_flux2"
    assert pipe.default_cfg == 1.0 and pipe.null_cond is None
    assert pipe.info["pipeline"] == "Flux2Pipeline" and pipe.info["guidance"] == 4.0 and pipe.info["height"] == 16
    assert pipe.encode(["a red cube"])["prompt_embeds"].shape == (1, 512, 24)


def test_flux2_klein_folder_loads_with_cfg_on_the_empty_negative_prompt(folders):
    pipe, _, _ = load(folders["klein"])
    assert pipe.latent_shape == (128, 4, 4) and pipe.default_cfg == 4.0 and pipe.null_cond is not None
    assert pipe.info["negative_prompt"] == ""
    distilled, _, _ = load(folders["klein_distilled"])
    assert distilled.default_cfg == 1.0  # model_index.json is_distilled: the pipeline skips CFG


def test_default_shift_is_the_pipelines_at_its_default_50_steps(folders):
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    pipe, _, _ = load(folders["dev"])
    assert pipe.default_shift == pytest.approx(torch.tensor(compute_empirical_mu(16, 50)).exp().item())


def test_a_resolution_not_divisible_by_16_pixels_per_latent_pixel_is_named(folders):
    with pytest.raises(ValueError, match="height 18 px is not divisible by 4"):  # tiny VAE: 2 × patchify 2
        load_pipeline(folders["dev"], train_prompts=PROMPTS, height=18, width=16)


# ------------------------------------------------------------------------------------------ sampling
def test_flux2_ode_sample_reproduces_flux2_pipeline_on_its_grid(folders):
    pipe, _, _ = load(folders["dev"])
    T = 3
    noise = torch.randn((1, 128, 4, 4), generator=torch.Generator().manual_seed(0))
    core = ode_sample(pipe.guide(["a red cube"], 1.0), noise.clone(), pipeline_grid(folders["dev"], T))
    out = reference(folders, "dev")(
        prompt="a red cube",
        height=16,
        width=16,
        num_inference_steps=T,
        guidance_scale=4.0,
        latents=noise.clone(),
        output_type="latent",
    ).images  # packed (1, 16, 128)
    torch.testing.assert_close(core, unpack_latents(out, 4, 4), atol=1e-4, rtol=1e-4)


def test_flux2_klein_ode_sample_with_cfg_reproduces_flux2_klein_pipeline(folders):
    pipe, _, _ = load(folders["klein"])
    T = 3
    noise = torch.randn((1, 128, 4, 4), generator=torch.Generator().manual_seed(1))
    core = ode_sample(pipe.guide(["a red cube"], 4.0), noise.clone(), pipeline_grid(folders["klein"], T))
    ref = reference(folders, "klein")
    out = ref(
        prompt="a red cube",
        height=16,
        width=16,
        num_inference_steps=T,
        guidance_scale=4.0,
        latents=noise.clone(),
        output_type="latent",
    ).images  # klein's "latent" output is already the VAE's (1, 32, 8, 8)
    torch.testing.assert_close(vae_latents(ref.vae, core), out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["dev", "klein"])
def test_decoder_undoes_the_batch_norm_and_patchify_as_the_pipeline_decodes(folders, kind):
    pipe, _, _ = load(folders[kind])
    ref = reference(folders, kind)
    latents = torch.randn((1, 128, 4, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        images = ref.vae.decode(vae_latents(ref.vae, latents), return_dict=False)[0]  # (1, 3, 16, 16)
    images = ref.image_processor.postprocess(images, output_type="pt")
    ours = pipe.decode(latents)
    assert ours.shape == (1, 16, 16, 3) and 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, images.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_decoder_gives_the_flux2_pipelines_own_images(folders):
    pipe, _, _ = load(folders["dev"])
    ref = reference(folders, "dev")
    noise = torch.randn((1, 128, 4, 4), generator=torch.Generator().manual_seed(4))
    kw = dict(prompt="a red cube", height=16, width=16, num_inference_steps=2)
    latents = ref(latents=noise.clone(), output_type="latent", **kw).images
    images = ref(latents=noise.clone(), output_type="pt", **kw).images  # (1, 3, H, W)
    torch.testing.assert_close(
        pipe.decode(unpack_latents(latents, 4, 4)), images.permute(0, 2, 3, 1), atol=1e-5, rtol=0
    )


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("kind", ["dev", "klein"])
@pytest.mark.parametrize("mode", ["dense_grpo", "flow_grpo"])
def test_two_iterations_train_the_lora(folders, tmp_path, kind, mode):
    pipe, train, evals = load(folders[kind])
    t = Trainer(train_config(tmp_path / "run", advantage_mode=mode), pipe, get_reward("jpeg_incompressibility"), train)
    res = t.run()
    assert [m["iteration"] for m in res.metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in res.metrics)
    assert lora_vector(t.model).abs().sum() > 0 and sum(m["optimizer_steps"] for m in res.metrics) > 0


def test_lora_targets_every_attention_feed_forward_and_single_block_linear(folders):
    pipe, _, _ = load(folders["dev"])
    assert sorted(lora.lora_targets(pipe.lora_module, "diffusers_flux2")) == sorted(
        [f"transformer_blocks.0.attn.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0")]
        + [f"transformer_blocks.0.attn.{n}" for n in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")]
        + [f"transformer_blocks.0.{ff}.{n}" for ff in ("ff", "ff_context") for n in ("linear_in", "linear_out")]
        + ["single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.0.attn.to_out"]
    )


def test_comfyui_keys_of_the_modules_comfyuis_diffusers_key_map_lacks():
    assert comfy_lora_key("transformer_blocks.3.ff.linear_in") == "diffusion_model.double_blocks.3.img_mlp.0"
    assert comfy_lora_key("transformer_blocks.3.ff_context.linear_out") == "diffusion_model.double_blocks.3.txt_mlp.2"
    assert comfy_lora_key("single_transformer_blocks.12.attn.to_qkv_mlp_proj") == (
        "diffusion_model.single_blocks.12.linear1"
    )
    assert comfy_lora_key("single_transformer_blocks.12.attn.to_out") == "diffusion_model.single_blocks.12.linear2"
    assert comfy_lora_key("transformer_blocks.3.attn.to_q") is None  # ComfyUI maps transformer.… (qkv slice)
    assert comfy_lora_key("transformer_blocks.3.attn.to_out.0") is None


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory):
    return family_checks.train_and_export(load(folders["dev"]), tmp_path_factory.mktemp("trained"))


def test_exported_lora_has_comfyui_keys_and_the_diffusers_layout_has_diffusers_names(trained):
    import safetensors.torch

    _, out = trained
    keys = set(safetensors.torch.load_file(str(out / "lora.safetensors")))
    assert "transformer.transformer_blocks.0.attn.to_q.lora_up.weight" in keys
    assert "diffusion_model.double_blocks.0.img_mlp.0.lora_up.weight" in keys
    assert "diffusion_model.single_blocks.0.linear1.alpha" in keys
    assert not any("linear_in" in k or "to_qkv_mlp_proj" in k for k in keys)
    peft_keys = set(safetensors.torch.load_file(str(out / "lora_diffusers.safetensors")))
    assert "transformer.transformer_blocks.0.ff.linear_in.lora_A.weight" in peft_keys
    assert all(k.startswith("transformer.") for k in peft_keys)


@pytest.mark.parametrize("file", ["lora.safetensors", "lora_diffusers.safetensors"])
def test_exported_lora_reloads_to_identical_outputs(folders, trained, file):
    t, out = trained
    fresh, _, _ = load(folders["dev"])
    meta = lora.read_lora_metadata(str(out / file))
    lora.inject_lora(fresh.lora_module, meta["base_arch"], rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    lora.load_lora(str(out / file), fresh.lora_module, prefix=fresh.lora_prefix)
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-6, rtol=1e-5)


def test_diffusers_layout_loads_in_flux2_pipeline_at_the_trained_strength(folders, trained):
    t, out = trained
    ref = reference(folders, "dev")
    ref.load_lora_weights(str(out / "lora_diffusers.safetensors"))
    fresh, _, _ = load(folders["dev"])
    fresh.model.transformer = ref.transformer
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-5, rtol=1e-4)


def test_init_lora_continues_from_the_exported_file_with_comfyui_keys(folders, trained, tmp_path):
    t, out = trained
    pipe, train, _ = load(folders["dev"])
    cont = Trainer(
        train_config(tmp_path / "cont", init_lora=str(out / "lora.safetensors")),
        pipe,
        get_reward("jpeg_incompressibility"),
        train,
    )
    torch.testing.assert_close(lora_vector(cont.model), lora_vector(t.model), atol=1e-6, rtol=1e-5)
