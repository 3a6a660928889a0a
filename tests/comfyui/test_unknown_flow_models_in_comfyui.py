"""Flow models no family record covers (skipped without $COMFYUI_PATH): ComfyUI's AuraFlow trains with `auto`
LoRA targets chosen from ComfyUI's own LoRA key map — the attention / MLP projections inside its block lists,
never its modulation layers — with a note saying so in the job's status and the LoRA's metadata; a model that
is not flow matching (a tiny SD1.5 UNet) is refused with a message naming the supported families. HiDream trains
the same way, its blocks differentiable through `_Trainable`. (The generic family server test,
test_families_in_comfyui.py, also trains the tiny AuraFlow and HiDream: two iterations, gradients in every LoRA
layer, the stock LoRA loader, the shared MODEL bit-identical.)

The in-process tests import ComfyUI's modules, so they need ComfyUI's packages; from the project's venv the module
runs them again under ComfyUI's python (as test_flux_training_in_comfyui.py does)."""

import importlib.util
import os
import re
import subprocess
import sys
import time

import harness
import pytest
import torch
from train_prompts import train_nodes

pytestmark = pytest.mark.comfyui
IN_PROCESS = importlib.util.find_spec("einops") is not None  # ComfyUI's requirements importable here
RERUN = os.environ.get("DENSEGRPO_UNKNOWN_FLOW_RERUN") == "1"  # the in-process rerun: no server tests there
needs_comfy_packages = pytest.mark.skipif(
    not IN_PROCESS, reason="ComfyUI's packages are not importable here: the test below runs them in ComfyUI's python"
)
over_http = pytest.mark.skipif(RERUN, reason="the server tests ran in the first process")
NODE = "DenseGRPO Train"
TINY_NODES = os.path.join(harness.HERE, "test_nodes")


@pytest.mark.skipif(IN_PROCESS, reason="the in-process tests of this module run in this process")
def test_the_in_process_tests_pass_in_comfyuis_python():
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
        env={**os.environ, "DENSEGRPO_UNKNOWN_FLOW_RERUN": "1", "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed, \d+ skipped in ", summary), summary


# ---------------------------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def comfy_importable():
    """ComfyUI's modules importable, on the CPU; the tiny family modules importable as a package."""
    sys.path.append(os.path.abspath(os.environ["COMFYUI_PATH"]))  # after the repository: our `nodes` package
    sys.path.insert(0, harness.HERE)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


@pytest.fixture(scope="module")
def auraflow(comfy_importable):
    from test_nodes import tiny_families

    return tiny_families.get("auraflow")


def module_names(regex: str, model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(regex, n)]


@needs_comfy_packages
def test_auto_targets_are_the_attention_and_mlp_projections_of_the_blocks(auraflow):
    from nodes.comfy_training import train_targets

    targets = train_targets(auraflow.model, NODE)
    dm = auraflow.model.model.diffusion_model
    chosen = module_names(targets.arch, dm)
    double = [f"double_layers.0.attn.w{s}{p}" for s in "12" for p in "qkvo"]
    double += [f"double_layers.0.mlp{s}.{p}" for s in "XC" for p in ("c_fc1", "c_fc2", "c_proj")]
    single = [f"single_layers.0.attn.w1{p}" for p in "qkvo"] + [
        f"single_layers.0.mlp.{p}" for p in ("c_fc1", "c_fc2", "c_proj")
    ]
    assert sorted(chosen) == sorted(double + single)
    assert targets.block_lists == ("double_layers", "single_layers")
    assert targets.arch == (
        r"(?:double_layers\.\d+\.(?:attn\.w1k|attn\.w1o|attn\.w1q|attn\.w1v|attn\.w2k|attn\.w2o|attn\.w2q|attn\.w2v"
        r"|mlpC\.c_fc1|mlpC\.c_fc2|mlpC\.c_proj|mlpX\.c_fc1|mlpX\.c_fc2|mlpX\.c_proj)"
        r"|single_layers\.\d+\.(?:attn\.w1k|attn\.w1o|attn\.w1q|attn\.w1v|mlp\.c_fc1|mlp\.c_fc2|mlp\.c_proj))"
    )


@needs_comfy_packages
def test_every_auto_target_is_a_key_comfyuis_lora_loader_maps_and_no_modulation_layer_is(auraflow):
    import comfy.lora

    from nodes.comfy_training import train_targets

    targets = train_targets(auraflow.model, NODE)
    chosen = module_names(targets.arch, auraflow.model.model.diffusion_model)
    mapped = set(comfy.lora.model_lora_keys_unet(auraflow.model.model, {}).values())
    assert all(f"diffusion_model.{n}.weight" in mapped for n in chosen)
    assert not [n for n in chosen if re.search(r"mod|norm|embed", n)]  # modCX, modX, modC, t_embedder stay frozen


@needs_comfy_packages
def test_the_note_names_the_class_and_how_many_linear_layers(auraflow):
    from nodes.comfy_training import train_targets

    targets = train_targets(auraflow.model, NODE)
    assert targets.note == (
        "no family record for AuraFlow: LoRA targets chosen from ComfyUI's LoRA key map, 21 Linear layers "
        "(attention/MLP projections in double_layers, single_layers)"
    )


@needs_comfy_packages
def test_the_private_pipeline_carries_the_auto_targets_block_lists_and_note(auraflow):
    from nodes.comfy_training import private_pipeline

    def cond(text):
        return auraflow.clip.encode_from_tokens_scheduled(auraflow.clip.tokenize(text))

    latent = auraflow.latent.clone()
    pipe = private_pipeline(auraflow.model, auraflow.vae, {"a red cube": cond("a red cube")}, cond(""), latent, NODE)
    assert pipe.arch.startswith("(?:double_layers") and pipe.block_lists == ("double_layers", "single_layers")
    assert pipe.info["targets_note"].startswith("no family record for AuraFlow")


@needs_comfy_packages
def test_a_family_model_keeps_its_records_targets_without_a_note(comfy_importable):
    from test_nodes import tiny_families

    from nodes.comfy_training import train_targets

    targets = train_targets(tiny_families.get("sd3").model, NODE)
    assert (targets.arch, targets.block_lists, targets.note) == ("mmdit", ("joint_blocks",), None)


def tiny_sd15():
    """A tiny SD1.5-like UNet (ComfyUI's SD15 config, eps prediction) at 32 channels."""
    import comfy.supported_models
    from test_nodes.tiny_families import model_from_config

    unet_config = {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [1, 1],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1],
        "channel_mult": [1, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": 768,
        "num_heads": 8,
        "num_head_channels": -1,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    return model_from_config(comfy.supported_models.SD15, unet_config, seed=71)


@needs_comfy_packages
def test_a_non_flow_model_is_refused_naming_the_supported_families(comfy_importable):
    from nodes.comfy_bridge import NodeInputError
    from nodes.comfy_training import train_targets

    model = tiny_sd15()
    assert type(model.model).__name__ == "BaseModel"  # SD15's model class: eps prediction
    with pytest.raises(NodeInputError) as e:
        train_targets(model, NODE)
    message = str(e.value)
    assert "input 'model' is not a flow-matching model" in message and "eps/v-prediction" in message
    assert re.search(r"supported families: .*\(SD3\); .*\(Flux\); .*\(Chroma\)", message), message


@needs_comfy_packages
def test_hidreams_auto_targets_are_its_attention_and_expert_projections_not_its_modulation(comfy_importable):
    from test_nodes import tiny_families

    from nodes.comfy_training import train_targets

    model = tiny_families.get("hidream").model
    targets = train_targets(model, NODE)
    chosen = module_names(targets.arch, model.model.diffusion_model)
    assert targets.block_lists == ("double_stream_blocks", "single_stream_blocks")
    assert (
        "double_stream_blocks.0.block.attn1.to_q_t" in chosen
        and "single_stream_blocks.0.block.ff_i.experts.1.w2" in chosen
    )
    assert not [n for n in chosen if "adaLN" in n or "caption_projection" in n]
    assert targets.note.startswith("no family record for HiDream: LoRA targets chosen from ComfyUI's LoRA key map, 33 ")


@needs_comfy_packages
def test_hidream_trains_only_through_the_differentiable_blocks_and_computes_as_comfyui_without_gradients(
    comfy_importable,
):
    """comfy_kitchen's rope kernel has no backward: the auto path runs HiDream's blocks under `_Trainable` while
    gradients are recorded (every LoRA layer gets a gradient); without gradients they compute as in ComfyUI."""
    from test_nodes import tiny_families

    from densegrpo_core.models import lora
    from nodes.comfy_training import private_pipeline

    tiny = tiny_families.get("hidream")

    def cond(text):
        return tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(text))

    pipe = private_pipeline(tiny.model, tiny.vae, {"a red cube": cond("a red cube")}, cond(""), tiny.latent, NODE)
    x, tau = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(0)), torch.tensor([0.7])
    c = pipe.encode(["a red cube"])
    with torch.no_grad():
        shared = tiny.model.model.apply_model(x, tau, **c)
        ours = pipe.model.base.apply_model(x, tau, **c)
    assert torch.equal(ours, shared)
    lora.inject_lora(pipe.lora_module, pipe.arch, rank=2, alpha=2.0)
    with torch.no_grad():
        for p in lora.lora_parameters(pipe.lora_module):
            p.normal_(0, 0.1)
    pipe.model(x, tau, c).square().mean().backward()
    grads = [p.grad for p in lora.lora_parameters(pipe.lora_module)]  # down and up of each of the 33 layers
    assert len(grads) == 2 * 33 and all(g is not None and g.abs().sum() > 0 for g in grads)


# -------------------------------------------------------------------------------------------- over HTTP
def train_prompt(name: str) -> dict:
    return {
        "tiny": {"class_type": "DenseGRPOTest_TinyFamily", "inputs": {"family": "auraflow"}},
        "reward": {"class_type": "DenseGRPO_LoadJPEGCompressibility", "inputs": {"device": "cpu"}},
        "psi": {"class_type": "DenseGRPO_PsiUniform", "inputs": {"a": 0.7}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        **train_nodes(
            {
                "model": ["tiny", 0],
                "clip": ["tiny", 1],
                "vae": ["tiny", 2],
                "reward_model": ["reward", 0],
                "psi": ["psi", 0],
                "prompts": "a red cube\na blue ball",
                "negative_prompt": "",
                "latent_image": ["latent", 0],
                "lora_name": name,
                "iterations": 1,
                "group_size": 2,
                "steps": 3,
                "cfg": 3.5,
                "scheduler": "normal",
                "advantage_mode": "dense_grpo",
                "learning_rate": 1e-2,
                "beta": 0.01,
                "save_every": 1,
                "seed": 0,
                "prompts_per_iteration": 1,
                "lora_rank": 4,
                "lora_alpha": 4.0,
                "train_batch": 2,
            }
        ),
    }


@pytest.fixture(scope="module")
def auraflow_job(comfy):
    entry = comfy.run(train_prompt("unknown_auraflow"))
    status = " ".join(entry["outputs"]["train"]["text"])
    job_id = re.search(r"job ([a-z0-9]{12})", status).group(1)
    t0 = time.time()
    while time.time() - t0 < 300:
        job = comfy.get(f"/densegrpo/jobs/{job_id}")
        if job["state"] in ("finished", "failed", "stopped"):
            break
        time.sleep(0.2)
    return status, job


@over_http
def test_the_train_nodes_status_says_the_targets_came_from_comfyuis_lora_key_map(auraflow_job):
    status, job = auraflow_job
    assert job["state"] == "finished", job
    assert "no family record for AuraFlow: LoRA targets chosen from ComfyUI's LoRA key map, 21 Linear layers" in status
    assert job["meta"]["targets_note"].startswith("no family record for AuraFlow")


@over_http
def test_the_lora_metadata_carries_the_targets_note_and_the_regex(comfy, auraflow_job):
    from safetensors import safe_open

    _, job = auraflow_job
    path = os.path.join(comfy.models_dir, "loras", "densegrpo", "unknown_auraflow_latest.safetensors")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["targets_note"].startswith("no family record for AuraFlow: LoRA targets chosen from ComfyUI's")
    assert meta["base_arch"].startswith(r"(?:double_layers\.\d+\.")
    assert len([k for k in keys if k.endswith(".lora_up.weight")]) == 21
