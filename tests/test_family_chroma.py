"""The Chroma family headless: a tiny random diffusers ChromaPipeline (real classes) loads through the production
loader as a FlowPipeline with true CFG and FLUX's resolution shift, the core's ODE sampler reproduces the
pipeline, both training modes train its LoRA, and the exported LoRA reloads (ours and diffusers' loaders)."""

import json
import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import family_checks  # noqa: E402
from diffusers_tiny_chroma import save_tiny_chroma  # noqa: E402
from family_checks import lora_vector, train_config  # noqa: E402

from densegrpo_core.method.rollout import ode_sample  # noqa: E402
from densegrpo_core.method.schedule import time_shift  # noqa: E402
from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families import CHROMA, family_for_comfy_model, family_for_diffusers_pipeline  # noqa: E402
from densegrpo_core.models.families.flux import flux_shift, pack_latents, unpack_latents  # noqa: E402
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402
from densegrpo_core.rewards import get_reward  # noqa: E402
from densegrpo_core.training.trainer import Trainer  # noqa: E402

PROMPTS = ["a red cube", "a blue ball", "a green tree"]
EVAL = ["a cat"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_chroma(str(tmp_path_factory.mktemp("diffusers") / "chroma"))


def load(folder, **kw):
    return load_pipeline(folder, train_prompts=PROMPTS, eval_prompts=EVAL, height=16, width=16, **kw)


# ------------------------------------------------------------------------------------------ record
def test_chroma_record_covers_comfyuis_class_and_the_diffusers_pipeline():
    assert family_for_diffusers_pipeline("ChromaPipeline") is CHROMA
    assert family_for_comfy_model("Chroma") is CHROMA
    assert CHROMA.uses_cfg and CHROMA.default_guidance is None


def _comfy_flux_style_blocks() -> torch.nn.Module:
    """Module names of ComfyUI's FLUX-style blocks (comfy/ldm/flux/layers.py), which Flux and Chroma share."""

    def block(names):
        m = torch.nn.Module()
        for name in names:
            parent = m
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, torch.nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, torch.nn.Linear(4, 4))
        return m

    net = torch.nn.Module()
    net.double_blocks = torch.nn.ModuleList(
        [block([f"{s}_attn.{p}" for s in ("img", "txt") for p in ("qkv", "proj")] + ["img_mlp.0", "img_mlp.2"])]
    )
    net.single_blocks = torch.nn.ModuleList([block(["linear1", "linear2"])])
    return net


def test_auto_targets_pick_one_preset_where_flux_and_chroma_name_the_same_comfyui_layers():
    net = _comfy_flux_style_blocks()
    names = lora.lora_targets(net, "auto")
    assert names == lora.lora_targets(net, "chroma") == lora.lora_targets(net, "flux")
    assert "single_blocks.0.linear1" in names and "double_blocks.0.txt_attn.qkv" in names


# ------------------------------------------------------------------------------------------ loader
def test_chroma_folder_loads_with_true_cfg_a_negative_prompt_and_the_resolution_shift(folder):
    pipe, train, evals = load(folder, negative_prompt="blurry")
    with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    assert (train, evals) == (PROMPTS, EVAL)
    assert pipe.latent_shape == (16, 8, 8) and pipe.arch == "diffusers_chroma" and pipe.lora_prefix == "transformer."
    assert pipe.default_cfg == 5.0 and pipe.null_cond is not None
    assert pipe.info["pipeline"] == "ChromaPipeline" and pipe.info["negative_prompt"] == "blurry"
    assert pipe.default_shift == pytest.approx(flux_shift(16, sched))  # 8×8 latents → 16 packed tokens
    from diffusers.pipelines.chroma.pipeline_chroma import calculate_shift

    assert pipe.default_shift == pytest.approx(torch.tensor(calculate_shift(16)).exp().item())


def test_prompts_are_encoded_with_chromas_text_mask(folder):
    pipe, _, _ = load(folder)
    cond = pipe.encode(["a red cube"])
    assert cond["prompt_embeds"].shape == (1, 512, 32) and cond["attention_mask"].shape == (1, 512)
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))("a red cube").input_ids)
    kept = tokens + 1  # the prompt's tokens, then the one pad token Chroma keeps unmasked
    assert cond["attention_mask"].sum().item() == kept and cond["attention_mask"][0, :kept].all()


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_chroma_ode_sample_reproduces_chroma_pipeline_on_its_grid(folder, cfg):
    from diffusers import ChromaPipeline

    pipe, _, _ = load(folder, negative_prompt="blurry")
    T = 3
    tau = torch.cat(
        [
            time_shift(torch.linspace(1, 1 / T, T, dtype=torch.float64), pipe.default_shift),
            torch.zeros(1, dtype=torch.float64),
        ]
    ).float()  # ChromaPipeline's sigmas, shifted
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(0))
    core = ode_sample(pipe.guide(["a red cube"], cfg), noise.clone(), tau)
    ref = ChromaPipeline.from_pretrained(folder, local_files_only=True)
    out = ref(
        "a red cube",
        negative_prompt="blurry",
        height=16,
        width=16,
        num_inference_steps=T,
        guidance_scale=cfg,
        latents=pack_latents(noise.clone()),
        max_sequence_length=512,
        output_type="latent",
    ).images
    torch.testing.assert_close(core, unpack_latents(out, 8, 8), atol=1e-4, rtol=1e-4)


def test_cfg_changes_the_chroma_sample(folder):
    pipe, _, _ = load(folder, negative_prompt="blurry")
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([1.0, 0.5, 0.0])
    a = ode_sample(pipe.guide(["a red cube"], 1.0), noise.clone(), grid)
    b = ode_sample(pipe.guide(["a red cube"], 5.0), noise.clone(), grid)
    assert (a - b).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("mode", ["dense_grpo", "flow_grpo"])
def test_two_iterations_train_the_chroma_lora(folder, tmp_path, mode):
    pipe, train, evals = load(folder)
    t = Trainer(
        train_config(tmp_path / "run", advantage_mode=mode, cfg_scale=2.0),
        pipe,
        get_reward("jpeg_incompressibility"),
        train,
        evals,
    )
    before = lora_vector(t.model).clone()
    res = t.run()
    assert [m["iteration"] for m in res.metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in res.metrics)
    assert sum(m["optimizer_steps"] for m in res.metrics) > 0
    assert (lora_vector(t.model) - before).abs().max() > 0
    keys = list(__import__("safetensors.torch").torch.load_file(res.lora_path))
    assert keys and all(k.startswith("transformer.") for k in keys)
    assert lora.read_lora_metadata(res.lora_path)["base_arch"] == "diffusers_chroma"


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    return family_checks.train_and_export(load(folder), tmp_path_factory.mktemp("trained"))


def velocity(pipe, prompts=("a red cube",)):
    return family_checks.velocity(pipe, torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(3)), prompts)


@pytest.mark.parametrize("file", ["lora.safetensors", "lora_diffusers.safetensors"])
def test_exported_chroma_lora_reloads_to_identical_outputs(folder, trained, file):
    t, out = trained
    fresh, _, _ = load(folder)
    meta = lora.read_lora_metadata(str(out / file))
    lora.inject_lora(fresh.lora_module, meta["base_arch"], rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    lora.load_lora(str(out / file), fresh.lora_module, prefix=fresh.lora_prefix)
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-6, rtol=1e-5)


def test_diffusers_layout_loads_in_chroma_pipeline_at_the_trained_strength(folder, trained):
    from diffusers import ChromaPipeline

    t, out = trained
    ref = ChromaPipeline.from_pretrained(folder, local_files_only=True)
    ref.load_lora_weights(str(out / "lora_diffusers.safetensors"))
    fresh, _, _ = load(folder)
    fresh.model.transformer = ref.transformer
    assert (velocity(fresh) - velocity(load(folder)[0])).abs().max() > 1e-4  # the LoRA is applied
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-5, rtol=1e-4)


def test_checkpointing_finds_the_blocks_not_the_approximators_nested_layers(folder):
    from densegrpo_core.resources.memory import find_block_lists

    pipe, _, _ = load(folder)
    assert list(find_block_lists(pipe.lora_module)) == list(CHROMA.diffusers.block_lists)
