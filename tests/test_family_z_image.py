"""Z-Image diffusers pipeline folders through the production loader: a tiny random ZImagePipeline of the real
classes (tests/diffusers_tiny_z_image.py), saved with save_pretrained and loaded back with local files only."""

import json
import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, os.path.dirname(__file__))
import family_checks  # noqa: E402
from diffusers_tiny_z_image import save_tiny_z_image  # noqa: E402
from family_checks import lora_vector, train_config  # noqa: E402

from densegrpo_core.method.rollout import ode_sample  # noqa: E402
from densegrpo_core.method.schedule import time_shift  # noqa: E402
from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families import Z_IMAGE, family_for_comfy_model  # noqa: E402
from densegrpo_core.models.families.flux import flux_shift  # noqa: E402
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402
from densegrpo_core.rewards import get_reward  # noqa: E402
from densegrpo_core.training.trainer import Trainer  # noqa: E402

PROMPTS = ["a red cube", "a blue ball on a long wooden table", "a green tree"]
EVAL = ["a cat"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_z_image(str(tmp_path_factory.mktemp("zimage") / "z"))


def load(folder, **kw):
    return load_pipeline(folder, train_prompts=PROMPTS, eval_prompts=EVAL, height=16, width=16, **kw)


def pipeline_grid(steps: int, shift: float) -> torch.Tensor:
    """ZImagePipeline's sigmas: linspace(1, 1/T, T) through the scheduler's shift, then 0."""
    s = torch.linspace(1, 1 / steps, steps, dtype=torch.float64)
    return torch.cat([time_shift(s, shift), torch.zeros(1, dtype=torch.float64)]).float()


# ------------------------------------------------------------------------------------------ record
def test_one_record_covers_comfyuis_lumina2_class_and_diffusers_zimage_pipeline():
    assert family_for_comfy_model("Lumina2") is Z_IMAGE  # comfy.supported_models.Lumina2 and ZImage build it
    assert Z_IMAGE.diffusers_pipelines == ("ZImagePipeline",)
    assert Z_IMAGE.default_cfg == 6.0  # ZImagePipeline's guidance_scale 5 in pos + 5·(pos − neg)


# ------------------------------------------------------------------------------------------ loader
def test_folder_loads_with_cfg_the_scheduler_shift_and_the_diffusers_preset(folder):
    pipe, train, evals = load(folder)
    assert (train, evals) == (PROMPTS, EVAL)
    assert pipe.latent_shape == (16, 8, 8) and pipe.arch == "diffusers_z_image"
    assert pipe.default_cfg == 6.0 and pipe.default_shift == 3.0 and pipe.null_cond is not None
    assert pipe.lora_prefix == "transformer." and pipe.info["pipeline"] == "ZImagePipeline"


def test_a_dynamic_shifting_scheduler_gives_the_shift_the_pipeline_computes_for_the_resolution(tmp_path):
    folder = save_tiny_z_image(str(tmp_path / "z"), dynamic_shift=True)
    pipe, _, _ = load(folder)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift

    assert pipe.default_shift == pytest.approx(flux_shift(16, sched))  # 8×8 latents → 16 patches
    assert pipe.default_shift == pytest.approx(torch.tensor(calculate_shift(16)).exp().item())


def test_each_prompt_keeps_its_own_caption_tokens_as_the_pipeline_encodes_them(folder):
    from diffusers import ZImagePipeline

    pipe, _, _ = load(folder)
    cond = pipe.encode(PROMPTS[:2])
    ref = ZImagePipeline.from_pretrained(folder, local_files_only=True)
    caps, _ = ref.encode_prompt(PROMPTS[:2], do_classifier_free_guidance=False)
    assert cond["prompt_mask"].sum(1).tolist() == [c.shape[0] for c in caps]
    for embeds, mask, cap in zip(cond["prompt_embeds"], cond["prompt_mask"], caps):
        torch.testing.assert_close(embeds[mask], cap)
        assert embeds[~mask].abs().sum() == 0  # PromptCache's zero padding


def test_a_rows_velocity_does_not_depend_on_the_caption_lengths_of_the_rows_beside_it(folder):
    pipe, _, _ = load(folder)
    x = torch.randn((2, 16, 8, 8), generator=torch.Generator().manual_seed(3))
    tau = torch.tensor([0.7, 0.4])
    with torch.no_grad():
        both = pipe.model(x, tau, pipe.encode(PROMPTS[:2]))  # 7 and 13 prompt words: padded to the longer
        alone = torch.cat([pipe.model(x[i : i + 1], tau[i : i + 1], pipe.encode([PROMPTS[i]])) for i in (0, 1)])
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance_scale", [5.0, 0.0])
def test_ode_sample_reproduces_z_image_pipeline_on_its_grid(folder, guidance_scale):
    """guidance_scale 5 (the pipeline's default, CFG with the negative prompt "") is the core's cfg 6;
    guidance_scale 0 (Z-Image-Turbo) is cfg 1, one conditional pass. Two prompts of different lengths."""
    from diffusers import ZImagePipeline

    pipe, _, _ = load(folder)
    T, prompts = 3, PROMPTS[:2]
    noise = torch.randn((2, 16, 8, 8), generator=torch.Generator().manual_seed(0))
    core = ode_sample(pipe.guide(prompts, 1.0 + guidance_scale), noise.clone(), pipeline_grid(T, pipe.default_shift))
    ref = ZImagePipeline.from_pretrained(folder, local_files_only=True)
    out = ref(
        list(prompts),
        height=16,
        width=16,
        num_inference_steps=T,
        guidance_scale=guidance_scale,
        latents=noise.clone(),
        output_type="latent",
    ).images
    torch.testing.assert_close(core, out, atol=1e-4, rtol=1e-4)


def test_vae_decoder_gives_the_pipelines_images_in_0_1(folder):
    from diffusers import ZImagePipeline

    pipe, _, _ = load(folder)
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(1))
    ref = ZImagePipeline.from_pretrained(folder, local_files_only=True)
    kw = dict(height=16, width=16, num_inference_steps=2, guidance_scale=0.0)
    latents = ref("a red cube", latents=noise.clone(), output_type="latent", **kw).images
    images = ref("a red cube", latents=noise.clone(), output_type="pt", **kw).images  # (1, 3, H, W)
    ours = pipe.decode(latents)  # (1, H, W, 3)
    assert ours.shape == (1, 16, 16, 3) and 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, images.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_the_diffusers_preset_adapts_attention_and_feed_forward_of_every_block(folder):
    pipe, _, _ = load(folder)
    names = lora.lora_targets(pipe.lora_module, "diffusers_z_image")
    blocks = ("layers.0", "noise_refiner.0", "context_refiner.0")
    parts = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
    parts += ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
    assert sorted(names) == sorted(f"{b}.{p}" for b in blocks for p in parts)


def test_the_memory_estimator_counts_the_transformer(folder):
    from densegrpo_core.resources.estimate import model_info

    pipe, _, _ = load(folder)
    info = model_info(pipe.lora_module, pipe.latent_shape, context_tokens=32)
    assert info.depth == 3 and info.width == 64 and info.tokens == 16
    assert info.block_params == sum(
        p.numel()
        for n in ("layers", "noise_refiner", "context_refiner")
        for p in getattr(pipe.lora_module, n).parameters()
    )


# ------------------------------------------------------------------------------------------ bad inputs
def test_a_resolution_beyond_the_rope_tables_is_named(folder):
    with pytest.raises(ValueError, match="exceeds .*position table"):
        load_pipeline(folder, train_prompts=PROMPTS, height=512, width=512)  # 128 patches a side, table 64


def test_a_resolution_not_divisible_by_the_patch_is_named(folder):
    with pytest.raises(ValueError, match="height 18 px is not divisible by 4"):
        load_pipeline(folder, train_prompts=PROMPTS, height=18, width=16)


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("mode", ["dense_grpo", "flow_grpo"])
def test_two_iterations_train_the_lora(folder, tmp_path, mode):
    pipe, train, evals = load(folder)
    t = Trainer(
        train_config(tmp_path / "run", advantage_mode=mode, eval_images=True),
        pipe,
        get_reward("jpeg_incompressibility"),
        train,
        evals,
    )
    res = t.run()
    assert [m["iteration"] for m in res.metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in res.metrics)
    assert lora_vector(t.model).abs().sum() > 0 and sum(m["optimizer_steps"] for m in res.metrics) > 0
    keys = list(__import__("safetensors.torch").torch.load_file(res.lora_path))
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert "transformer.layers.0.attention.to_q.lora_up.weight" in keys


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    return family_checks.train_and_export(load(folder), tmp_path_factory.mktemp("trained"))


def velocity(pipe, prompts=("a red cube",)):
    return family_checks.velocity(pipe, torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(3)), prompts)


@pytest.mark.parametrize("file", ["lora.safetensors", "lora_diffusers.safetensors"])
def test_exported_lora_reloads_to_identical_outputs(folder, trained, file):
    t, out = trained
    fresh, _, _ = load(folder)
    meta = lora.read_lora_metadata(str(out / file))
    lora.inject_lora(fresh.lora_module, meta["base_arch"], rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    lora.load_lora(str(out / file), fresh.lora_module, prefix=fresh.lora_prefix)
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-6, rtol=1e-5)


def test_diffusers_layout_loads_in_z_image_pipeline_at_the_trained_strength(folder, trained):
    from diffusers import ZImagePipeline

    t, out = trained
    ref = ZImagePipeline.from_pretrained(folder, local_files_only=True)
    ref.load_lora_weights(str(out / "lora_diffusers.safetensors"))
    fresh, _, _ = load(folder)
    fresh.model.transformer = ref.transformer
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-5, rtol=1e-4)


def test_auto_lora_targets_pick_the_diffusers_preset_over_the_comfyui_one_naming_fewer_of_its_layers(folder):
    pipe, _, _ = load(folder)
    assert lora.lora_targets(pipe.lora_module, "auto") == lora.lora_targets(pipe.lora_module, "diffusers_z_image")
