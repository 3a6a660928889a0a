"""Qwen-Image diffusers pipeline folders through the production loader: a tiny random QwenImagePipeline of the real
classes (tests/diffusers_tiny_qwen_image.py), saved with save_pretrained and loaded back with local files only."""

import json
import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, os.path.dirname(__file__))
import family_checks  # noqa: E402
from diffusers_tiny_qwen_image import save_tiny_qwen_image  # noqa: E402
from family_checks import lora_vector, train_config  # noqa: E402

from densegrpo_core.method.rollout import ode_sample  # noqa: E402
from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.diffusers_pipeline import pipeline_kind  # noqa: E402
from densegrpo_core.models.families import QWEN_IMAGE, family_for_comfy_model  # noqa: E402
from densegrpo_core.models.families.flux import flux_shift, pack_latents, unpack_latents  # noqa: E402
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402
from densegrpo_core.rewards import get_reward  # noqa: E402
from densegrpo_core.training.trainer import Trainer  # noqa: E402

PROMPTS = ["a red cube", "a blue ball on a long wooden table", "a green tree"]
EVAL = ["a cat"]
NEGATIVE = " "  # QwenImagePipeline's examples: true CFG needs a negative prompt, even a blank one


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_qwen_image(str(tmp_path_factory.mktemp("diffusers") / "qwen_image"))


def load(folder, **kw):
    return load_pipeline(
        folder, train_prompts=PROMPTS, eval_prompts=EVAL, height=16, width=16, negative_prompt=NEGATIVE, **kw
    )


def reference(folder):
    from diffusers import QwenImagePipeline

    return QwenImagePipeline.from_pretrained(folder, local_files_only=True)


def noise(seed=0):
    return torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ loader
def test_a_qwen_image_folder_is_the_qwen_image_family(folder):
    assert pipeline_kind(folder) == ("qwen_image", "QwenImagePipeline")
    assert family_for_comfy_model("QwenImage") is QWEN_IMAGE


def test_the_folder_loads_with_true_cfg_a_negative_prompt_and_16_channel_latents(folder):
    pipe, train, evals = load(folder)
    assert (train, evals) == (PROMPTS, EVAL)
    assert pipe.latent_shape == (16, 8, 8) and pipe.arch == "diffusers_qwen_image"
    assert pipe.default_cfg == 4.0 and pipe.null_cond is not None and pipe.lora_prefix == "transformer."
    assert pipe.info["pipeline"] == "QwenImagePipeline" and pipe.info["negative_prompt"] == NEGATIVE
    assert (pipe.info["height"], pipe.info["width"]) == (16, 16)


def test_the_shift_is_the_dynamic_shift_qwen_image_pipeline_computes_at_this_resolution(folder):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    pipe, _, _ = load(folder)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    mu = calculate_shift(16, sched["base_image_seq_len"], sched["max_image_seq_len"], 0.5, sched["max_shift"])
    assert pipe.default_shift == pytest.approx(flux_shift(16, sched))  # 8×8 latents → 16 packed tokens
    assert pipe.default_shift == pytest.approx(torch.tensor(mu).exp().item())


def test_prompts_and_their_masks_are_zero_padded_to_the_longest(folder):
    pipe, _, _ = load(folder)
    cond = pipe.encode(["a red cube", "a blue ball on a long wooden table"])
    embeds, mask = cond["prompt_embeds"], cond["prompt_embeds_mask"]
    assert embeds.shape[:2] == mask.shape and embeds.shape[-1] == 32
    short, long = mask.sum(1).tolist()
    assert long == mask.shape[1] > short and not mask[0, short:].any() and not embeds[0, short:].any()
    assert pipe.null_cond(2)["prompt_embeds"].shape == embeds.shape


def test_an_encoded_prompt_is_the_pipelines_own_embedding(folder):
    pipe, _, _ = load(folder)
    ref, ref_mask = reference(folder).encode_prompt(["a green tree"], device="cpu", max_sequence_length=512)
    cond = pipe.encode(["a green tree"])
    n = int(cond["prompt_embeds_mask"].sum())
    assert ref_mask is None and n == ref.shape[1]
    torch.testing.assert_close(cond["prompt_embeds"][:, :n], ref, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------ sampling
def test_the_ode_sample_reproduces_qwen_image_pipeline_on_its_grid(folder):
    """Without CFG (true_cfg_scale 1, no negative prompt), on the pipeline's own sigmas (dynamic shift, then
    stretched to shift_terminal)."""
    pipe, _, _ = load(folder)
    ref = reference(folder)
    out = ref(
        "a red cube",
        height=16,
        width=16,
        num_inference_steps=3,
        true_cfg_scale=1.0,
        latents=pack_latents(noise()),
        output_type="latent",
    ).images
    tau = ref.scheduler.sigmas.float()  # (T+1,), ending at 0
    core = ode_sample(pipe.guide(["a red cube"], 1.0), noise(), tau)
    torch.testing.assert_close(core, unpack_latents(out, 8, 8), atol=1e-4, rtol=1e-4)


def test_cfg_rows_are_the_pipelines_conditional_and_negative_predictions(folder):
    """With true CFG the pipeline runs the transformer on the prompt, then on the negative prompt: the core's
    conditional and unconditional velocities at the first step are those two predictions (the core then guides
    them plainly)."""
    pipe, _, _ = load(folder)
    ref = reference(folder)
    calls = []
    ref.transformer.register_forward_hook(lambda m, args, out: calls.append(out[0]))
    ref(
        "a red cube",
        negative_prompt=NEGATIVE,
        true_cfg_scale=4.0,
        height=16,
        width=16,
        num_inference_steps=2,  # (one step divides by zero in diffusers' shift_terminal stretch)
        latents=pack_latents(noise()),
        output_type="latent",
    )
    tau = torch.tensor([float(ref.scheduler.sigmas[0])])
    with torch.no_grad():
        v_c = pipe.model(noise(), tau, pipe.encode(["a red cube"]))
        v_u = pipe.model(noise(), tau, pipe.null_cond(1))
    torch.testing.assert_close(v_c, unpack_latents(calls[0], 8, 8), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_u, unpack_latents(calls[1], 8, 8), atol=1e-5, rtol=1e-5)


def test_the_decoder_gives_the_pipelines_own_decoded_images_in_0_1(folder):
    pipe, _, _ = load(folder)
    ref = reference(folder)
    kw = dict(height=16, width=16, num_inference_steps=2, true_cfg_scale=1.0)
    latents = ref("a red cube", latents=pack_latents(noise(1)), output_type="latent", **kw).images
    images = ref("a red cube", latents=pack_latents(noise(1)), output_type="pt", **kw).images  # (1, 3, H, W)
    ours = pipe.decode(unpack_latents(latents, 8, 8))  # (1, H, W, 3)
    assert ours.shape == (1, 16, 16, 3) and 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, images.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_the_decoder_names_a_latent_of_the_wrong_shape(folder):
    pipe, _, _ = load(folder)
    with pytest.raises(ValueError, match=r"latents must be \(N, 16, h, w\).*\(1, 16, 1, 8, 8\)"):
        pipe.decode(torch.zeros(1, 16, 1, 8, 8))


def test_a_resolution_not_divisible_by_vae_scale_times_patch_is_named(folder):
    with pytest.raises(ValueError, match="height 18 px is not divisible by 4"):
        load_pipeline(folder, train_prompts=PROMPTS, height=18, width=16)


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("mode", ["dense_grpo", "flow_grpo"])
def test_two_iterations_train_the_lora(folder, tmp_path, mode):
    pipe, train, evals = load(folder)
    t = Trainer(
        train_config(tmp_path / "run", advantage_mode=mode), pipe, get_reward("jpeg_incompressibility"), train, evals
    )
    before = lora_vector(t.model).clone()
    res = t.run()
    assert [m["iteration"] for m in res.metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in res.metrics)
    assert sum(m["optimizer_steps"] for m in res.metrics) > 0
    assert not torch.equal(lora_vector(t.model), before) and lora_vector(t.model).abs().sum() > 0
    keys = list(__import__("safetensors.torch").torch.load_file(res.lora_path))
    assert keys and all(k.startswith("transformer.transformer_blocks.") for k in keys)


def test_the_lora_targets_attention_and_both_mlps_but_not_the_last_blocks_dropped_text_outputs(folder):
    """After the last block only the image stream is read: its text query, text output projection and text MLP get
    no LoRA (they would get no gradient); its text keys and values still feed the image rows of the attention."""
    pipe, _, _ = load(folder)
    names = lora.lora_targets(pipe.lora_module, "diffusers_qwen_image")
    attention = {f"attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")}
    mlps = {f"{s}_mlp.net.{i}" for s in ("img", "txt") for i in ("0.proj", "2")}
    dropped = {"attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2"}
    assert {n.split(".", 2)[2] for n in names if n.startswith("transformer_blocks.0.")} == attention | mlps | dropped
    assert {n.split(".", 2)[2] for n in names if n.startswith("transformer_blocks.1.")} == (attention | mlps) - dropped


def test_every_lora_layer_gets_a_gradient(folder):
    pipe, _, _ = load(folder)
    lora.inject_lora(pipe.lora_module, pipe.arch, rank=2, alpha=2.0)
    with torch.no_grad():
        for p in lora.lora_parameters(pipe.lora_module):
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pipe.model(noise(4), torch.tensor([0.6]), pipe.encode(["a red cube"])).square().sum().backward()
    ups = {n: p for n, p in pipe.lora_module.named_parameters() if ".lora_B." in n}
    assert ups and [n for n, p in ups.items() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_the_memory_estimator_counts_the_transformer_and_comfyuis_video_shaped_latents(folder):
    from densegrpo_core.resources.estimate import model_info

    pipe, _, _ = load(folder)
    net = pipe.lora_module
    info = model_info(net, (16, 8, 8), context_tokens=12)
    assert (info.depth, info.tokens, info.width, info.context_tokens) == (2, 16, 32, 12)
    assert info.params == sum(p.numel() for p in net.parameters())
    targets = lora.lora_targets(net, "diffusers_qwen_image")
    assert lora.lora_targets(net, "auto") == targets  # SD3's and FLUX's diffusers presets match only a part
    assert info.lora_params_per_rank == sum(
        net.get_submodule(n).in_features + net.get_submodule(n).out_features for n in targets
    )
    assert model_info(net, (16, 1, 8, 8), context_tokens=12) == info  # ComfyUI's (C, T = 1, H, W)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    return family_checks.train_and_export(load(folder), tmp_path_factory.mktemp("trained"))


def velocity(pipe, prompts=("a red cube",)):
    return family_checks.velocity(pipe, noise(3), prompts)


def test_the_diffusers_layout_loads_in_qwen_image_pipeline_at_the_trained_strength(folder, trained):
    t, out = trained
    ref = reference(folder)
    ref.load_lora_weights(str(out / "lora_diffusers.safetensors"))
    fresh, _, _ = load(folder)
    fresh.model.transformer = ref.transformer
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-5, rtol=1e-4)


def test_the_comfyui_layout_reloads_to_identical_outputs(folder, trained):
    t, out = trained
    fresh, _, _ = load(folder)
    meta = lora.read_lora_metadata(str(out / "lora.safetensors"))
    lora.inject_lora(fresh.lora_module, meta["base_arch"], rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    lora.load_lora(str(out / "lora.safetensors"), fresh.lora_module, prefix=fresh.lora_prefix)
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-6, rtol=1e-5)
