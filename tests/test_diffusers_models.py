"""Diffusers SD3.5 and FLUX pipeline folders through the production loader: tiny random real classes, saved with
save_pretrained and loaded back with local files only (tests/diffusers_tiny.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
sys.path.insert(0, os.path.dirname(__file__))
import family_checks  # noqa: E402
from diffusers_tiny import save_tiny_flux, save_tiny_sd35  # noqa: E402
from family_checks import lora_vector, train_config  # noqa: E402

from densegrpo_core.method.rollout import ode_sample  # noqa: E402
from densegrpo_core.method.schedule import flow_grid, time_shift  # noqa: E402
from densegrpo_core.models import lora  # noqa: E402
from densegrpo_core.models.families.flux import flux_shift, pack_latents, unpack_latents  # noqa: E402
from densegrpo_core.models.pipeline import load_pipeline  # noqa: E402
from densegrpo_core.models.spec import ModelSpec, load_prompts  # noqa: E402
from densegrpo_core.rewards import get_reward  # noqa: E402
from densegrpo_core.training.trainer import TrainConfig, Trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
PROMPTS = ["a red cube", "a blue ball", "a green tree"]
EVAL = ["a cat"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    return {"sd35": save_tiny_sd35(str(root / "sd35")), "flux": save_tiny_flux(str(root / "flux"))}


def load(folder, **kw):
    return load_pipeline(folder, train_prompts=PROMPTS, eval_prompts=EVAL, height=16, width=16, **kw)


# ------------------------------------------------------------------------------------------ loader
def test_sd35_folder_loads_as_a_flow_pipeline_with_cfg_and_scheduler_shift(folders):
    pipe, train, evals = load(folders["sd35"])
    assert (train, evals) == (PROMPTS, EVAL)
    assert pipe.latent_shape == (16, 8, 8) and pipe.arch == "diffusers_sd3"
    assert pipe.default_cfg == 4.5 and pipe.default_shift == 3.0 and pipe.null_cond is not None
    assert pipe.lora_prefix == "transformer."
    assert pipe.info["pipeline"] == "StableDiffusion3Pipeline" and pipe.info["height"] == 16


def test_flux_folder_loads_without_cfg_and_with_the_resolution_shift_diffusers_computes(folders):
    pipe, _, _ = load(folders["flux"])
    with open(os.path.join(folders["flux"], "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    assert pipe.default_cfg == 1.0 and pipe.null_cond is None and pipe.arch == "diffusers_flux"
    assert pipe.default_shift == pytest.approx(flux_shift(16, sched))  # 8×8 latents → 16 packed tokens
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert pipe.default_shift == pytest.approx(torch.tensor(calculate_shift(16)).exp().item())


def test_text_encoders_are_freed_and_an_unencoded_prompt_is_a_clear_error(folders):
    import gc

    from transformers import CLIPTextModelWithProjection

    pipe, _, _ = load(folders["sd35"])
    gc.collect()
    assert not any(type(o) is CLIPTextModelWithProjection for o in gc.get_objects())
    with pytest.raises(ValueError, match="'a dog' was not encoded"):
        pipe.encode(["a dog"])


def test_sd3_ode_sample_reproduces_stable_diffusion3_pipeline(folders):
    from diffusers import StableDiffusion3Pipeline

    pipe, _, _ = load(folders["sd35"])
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(0))
    core = ode_sample(pipe.guide(["a red cube"], 4.5), noise.clone(), flow_grid(4, pipe.default_shift))
    ref = StableDiffusion3Pipeline.from_pretrained(folders["sd35"], local_files_only=True)
    out = ref(
        "a red cube",
        height=16,
        width=16,
        num_inference_steps=4,
        guidance_scale=4.5,
        latents=noise.clone(),
        max_sequence_length=128,
        output_type="latent",
    ).images
    torch.testing.assert_close(core, out, atol=1e-4, rtol=1e-4)


def test_vae_decoder_gives_the_pipelines_images_in_0_1(folders):
    from diffusers import StableDiffusion3Pipeline

    pipe, _, _ = load(folders["sd35"])
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(1))
    ref = StableDiffusion3Pipeline.from_pretrained(folders["sd35"], local_files_only=True)
    kw = dict(height=16, width=16, num_inference_steps=2, max_sequence_length=128)
    latents = ref("a red cube", latents=noise.clone(), output_type="latent", **kw).images
    images = ref("a red cube", latents=noise.clone(), output_type="pt", **kw).images  # (1, 3, H, W)
    ours = pipe.decode(latents)  # (1, H, W, 3)
    assert ours.shape == (1, 16, 16, 3) and 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, images.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_flux_ode_sample_reproduces_flux_pipeline_on_its_grid(folders):
    from diffusers import FluxPipeline

    pipe, _, _ = load(folders["flux"])
    T = 3
    tau = torch.cat(
        [
            time_shift(torch.linspace(1, 1 / T, T, dtype=torch.float64), pipe.default_shift),
            torch.zeros(1, dtype=torch.float64),
        ]
    ).float()  # FluxPipeline's sigmas, shifted
    noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(0))
    core = ode_sample(pipe.guide(["a red cube"], 1.0), noise.clone(), tau)
    ref = FluxPipeline.from_pretrained(folders["flux"], local_files_only=True)
    out = ref(
        "a red cube",
        height=16,
        width=16,
        num_inference_steps=T,
        guidance_scale=3.5,
        latents=pack_latents(noise.clone()),
        max_sequence_length=512,
        output_type="latent",
    ).images
    torch.testing.assert_close(core, unpack_latents(out, 8, 8), atol=1e-4, rtol=1e-4)


def test_single_file_transformer_replaces_the_folders(folders, tmp_path):
    import safetensors.torch

    pipe, _, _ = load(folders["sd35"])
    sd = {k: v + 0.01 for k, v in pipe.lora_module.state_dict().items()}
    safetensors.torch.save_file(sd, str(tmp_path / "t.safetensors"))
    other, _, _ = load(folders["sd35"], transformer_file=str(tmp_path / "t.safetensors"))
    torch.testing.assert_close(other.lora_module.state_dict()["proj_out.weight"], sd["proj_out.weight"])
    assert other.info["transformer_file"] == "t.safetensors"


# ------------------------------------------------------------------------------------------ bad inputs
def test_a_folder_that_is_not_a_diffusers_pipeline_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.* is not a diffusers pipeline folder"):
        load(str(tmp_path))


def test_an_unsupported_pipeline_class_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="unsupported pipeline class 'StableDiffusionXLPipeline'"):
        load(str(tmp_path))


def test_a_missing_prompts_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_prompts: prompts file .*nope.txt.* does not exist"):
        ModelSpec(model=str(tmp_path), train_prompts=str(tmp_path / "nope.txt")).load("cpu")


def test_a_resolution_not_divisible_by_the_patch_size_is_named(folders):
    with pytest.raises(ValueError, match="height 18 px is not divisible by 4"):
        load_pipeline(folders["sd35"], train_prompts=PROMPTS, height=18, width=16)


def test_prompts_file_is_one_prompt_a_line(tmp_path):
    (tmp_path / "train.txt").write_text("a red cube\n\n  a blue ball \n")
    assert load_prompts(str(tmp_path / "train.txt")) == ["a red cube", "a blue ball"]


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("kind", ["sd35", "flux"])
@pytest.mark.parametrize("mode", ["dense_grpo", "flow_grpo"])
def test_two_iterations_train_the_lora(folders, tmp_path, kind, mode):
    pipe, train, evals = load(folders[kind])
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
    assert sorted(os.listdir(tmp_path / "run" / "samples")) == ["eval_00000.png", "eval_00002.png"]


def test_the_last_sd3_blocks_context_query_gets_no_lora(folders):
    pipe, _, _ = load(folders["sd35"])
    names = lora.lora_targets(pipe.lora_module, "diffusers_sd3")
    assert "transformer_blocks.0.attn.add_q_proj" in names
    assert "transformer_blocks.1.attn.add_q_proj" not in names and "transformer_blocks.1.attn.add_k_proj" in names


def test_resume_continues_the_same_curves(folders, tmp_path):
    def trainer(name, iterations):
        pipe, train, evals = load(folders["sd35"])
        return Trainer(
            train_config(tmp_path / name, iterations=iterations), pipe, get_reward("jpeg_incompressibility"), train
        )

    full = trainer("full", 2)
    full.run()
    trainer("part", 1).run()
    resumed = trainer("part", 2)
    resumed.load_checkpoint(str(tmp_path / "part" / "checkpoint"))
    resumed.run()
    torch.testing.assert_close(lora_vector(resumed.model), lora_vector(full.model), atol=1e-6, rtol=1e-5)
    assert [m["reward_mean"] for m in resumed.metrics] == pytest.approx(
        [m["reward_mean"] for m in full.metrics], abs=1e-6
    )


@pytest.fixture(scope="module")
def trained(folders, tmp_path_factory):
    return family_checks.train_and_export(load(folders["sd35"]), tmp_path_factory.mktemp("trained"))


def velocity(pipe, prompts=("a red cube",)):
    return family_checks.velocity(pipe, torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(3)), prompts)


@pytest.mark.parametrize("file", ["lora.safetensors", "lora_diffusers.safetensors"])
def test_exported_lora_reloads_to_identical_outputs(folders, trained, file):
    t, out = trained
    fresh, _, _ = load(folders["sd35"])
    meta = lora.read_lora_metadata(str(out / file))
    lora.inject_lora(fresh.lora_module, meta["base_arch"], rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    lora.load_lora(str(out / file), fresh.lora_module, prefix=fresh.lora_prefix)
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-6, rtol=1e-5)


def test_diffusers_layout_loads_in_diffusers_at_the_trained_strength(folders, trained):
    from diffusers import StableDiffusion3Pipeline

    t, out = trained
    ref = StableDiffusion3Pipeline.from_pretrained(folders["sd35"], local_files_only=True)
    ref.load_lora_weights(str(out / "lora_diffusers.safetensors"))
    fresh, _, _ = load(folders["sd35"])
    fresh.model.transformer = ref.transformer
    torch.testing.assert_close(velocity(fresh), velocity(t.pipe), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("file", ["lora.safetensors", "lora_diffusers.safetensors"])
def test_init_lora_continues_from_either_layout(folders, trained, tmp_path, file):
    t, out = trained
    pipe, train, _ = load(folders["sd35"])
    cont = Trainer(
        train_config(tmp_path / "cont", init_lora=str(out / file)), pipe, get_reward("jpeg_incompressibility"), train
    )
    torch.testing.assert_close(lora_vector(cont.model), lora_vector(t.model), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_train_with_a_diffusers_folder_writes_a_lora(folders, tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "cfg.toml").write_text(
        f'model = "{folders["sd35"]}"\ntrain_prompts = "{tmp_path / "train.txt"}"\neval_prompts = ["a cat"]\n'
        f'resolution = 16\nreward = "jpeg_incompressibility"\nout_dir = "{tmp_path / "out"}"\n'
        "steps = 3\niterations = 2\nprompts_per_iteration = 2\ngroup_size = 2\ntrain_batch = 2\nlora_rank = 2\n"
        "lora_alpha = 4\neval_every = 0\nsave_every = 0\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "densegrpo_core", "train", "--config", str(tmp_path / "cfg.toml"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(tmp_path / "out" / "lora.safetensors")
    assert json.loads((tmp_path / "out" / "model.json").read_text())["resolution"] == 16
    assert os.listdir(tmp_path / "out" / "samples")


def test_cli_train_names_a_missing_prompts_file(folders, tmp_path):
    (tmp_path / "cfg.toml").write_text(f'model = "{folders["sd35"]}"\ntrain_prompts = "{tmp_path}/missing.txt"\n')
    r = subprocess.run(
        [sys.executable, "-m", "densegrpo_core", "train", "--config", str(tmp_path / "cfg.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "missing.txt" in r.stderr


def test_two_gloo_ranks_under_torchrun_keep_identical_loras(folders, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            os.path.join(os.path.dirname(__file__), "ddp_worker.py"),
            str(out),
            folders["sd35"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["lora"].abs().sum() > 0
    torch.testing.assert_close(r0["lora"], r1["lora"], atol=0, rtol=0)
    assert sorted(os.listdir(out)) == ["checkpoint", "checkpoint-000002", "lora.safetensors", "metrics.jsonl"]


def test_the_paper_config_is_a_valid_train_config():
    from densegrpo_core.app.cli import _load_toml

    raw = _load_toml(os.path.join(ROOT, "configs", "sd35m_pickscore_dense_grpo.toml"))
    spec = ModelSpec.pop_from(raw)
    config = TrainConfig.from_dict(raw)
    assert (spec.resolution, config.steps, config.group_size, config.lora_rank, config.lora_alpha) == (
        512,
        10,
        24,
        32,
        64,
    )
    assert (config.lr, config.beta, config.batch_size, config.prompts_per_rank(16)) == (3e-4, 0.01, 48 * 24, 3)


def test_gpu_bench_script_accepts_a_diffusers_folder(folders, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu_sd35m

    assert gpu_sd35m.main(["--tiny", "--diffusers", folders["sd35"], "--out", str(tmp_path), "--group-sizes", "2"]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["config"]["arch"] == "diffusers" and result["runs"]


def test_a_resolution_beyond_the_sd3_position_table_is_named(folders):
    with pytest.raises(ValueError, match="64 px exceeds .*pos_embed_max_size 8: at most 32 px"):
        load_pipeline(folders["sd35"], train_prompts=PROMPTS, height=64, width=64)
