"""The ComfyUI skin without ComfyUI: input checks, ψ nodes and files, and the SDE sampler function.

What needs ComfyUI objects (MODEL, VAE, CFGGuider) is covered by tests/comfyui/ against a real ComfyUI.
"""

import json

import pytest
import torch

from densegrpo_core.method.guidance import DenoiserVelocity, denoised_from_velocity, velocity_from_denoised
from densegrpo_core.method.schedule import Psi, shifted_linspace_grid
from densegrpo_core.util.plots import image_grid
from nodes import comfy_bridge as bridge
from nodes.psi_nodes import PsiFromList, PsiUniform, find_psi_file, list_psi_files
from nodes.sampler_nodes import sde_sampler_function


class TinyDenoiser:
    """A flow model's denoiser x̂0(x, σ) as ComfyUI's wrapped model returns it (x - σ·v)."""

    def __init__(self, model, cond):
        self.model, self.cond = model, cond

    def __call__(self, x, sigma, **extra_args):
        v = self.model(x, sigma, self.cond.expand(x.shape[0], -1))
        return x - v * sigma.reshape(-1, 1, 1, 1)


def stock_euler(model, x, sigmas, extra_args=None):
    """k-diffusion's / ComfyUI's `sample_euler` without churn, written out as ComfyUI does it."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = (x - denoised) / sigma_hat.reshape(1, 1, 1, 1)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@pytest.fixture
def denoiser(tiny_velocity):
    return TinyDenoiser(tiny_velocity, torch.randn(1, 4, generator=torch.Generator().manual_seed(1)))


def test_sde_sampler_with_psi_zero_is_bit_identical_to_stock_euler(denoiser):
    sigmas = shifted_linspace_grid(8, 3.0)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sde_sampler_function(denoiser, x.clone(), sigmas, {}, psi=Psi.uniform(0.0, 1), seed=5)
    assert torch.equal(ours, stock_euler(denoiser, x.clone(), sigmas))


def test_sde_sampler_with_psi_adds_seeded_noise(denoiser):
    sigmas = shifted_linspace_grid(6, 3.0)
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    a = sde_sampler_function(denoiser, x.clone(), sigmas, {}, psi=Psi.uniform(0.7, 1), seed=1)
    b = sde_sampler_function(denoiser, x.clone(), sigmas, {}, psi=Psi.uniform(0.7, 1), seed=1)
    c = sde_sampler_function(denoiser, x.clone(), sigmas, {}, psi=Psi.uniform(0.7, 1), seed=2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a, stock_euler(denoiser, x.clone(), sigmas))


def test_sde_sampler_records_the_trajectory_and_calls_back_every_step(denoiser):
    sigmas = shifted_linspace_grid(5, 3.0)
    recorder, seen = {}, []
    x = torch.randn(2, 2, 8, 8)
    out = sde_sampler_function(
        denoiser, x, sigmas, {}, callback=lambda d: seen.append(d["i"]), psi=Psi.uniform(0.7, 1), recorder=recorder
    )
    ro = recorder["rollout"]
    assert ro.latents.shape == (2, 6, 2, 8, 8) and torch.equal(ro.latents[:, -1], out)
    assert ro.log_probs.shape == (2, 5) and seen == [0, 1, 2, 3, 4]


def test_sde_sampler_refuses_non_flow_sigmas(denoiser):
    sigmas = torch.tensor([14.6, 7.0, 2.0, 0.0])  # an eps-prediction (SD1.5-like) schedule
    with pytest.raises(ValueError, match="sigmas.*flow-matching"):
        sde_sampler_function(denoiser, torch.randn(1, 2, 8, 8), sigmas, {}, psi=Psi.uniform(0.7, 1))


def test_sde_sampler_refuses_psi_of_the_wrong_length(denoiser):
    with pytest.raises(ValueError, match="input 'psi'.*3 values.*5 steps"):
        sde_sampler_function(
            denoiser, torch.randn(1, 2, 8, 8), shifted_linspace_grid(5, 3.0), {}, psi=Psi([0.7, 0.6, 0.5])
        )


def test_denoiser_velocity_recovers_the_model_velocity(tiny_velocity, denoiser):
    x, tau = torch.randn(4, 2, 8, 8), torch.full((4,), 0.6)
    v = DenoiserVelocity(denoiser, {})(x, tau)
    assert torch.allclose(v, tiny_velocity(x, tau, denoiser.cond.expand(4, -1)), atol=1e-5)
    assert torch.allclose(velocity_from_denoised(x, denoised_from_velocity(x, v, tau), tau), v, atol=1e-5)


def test_uniform_psi_node_stretches_to_any_step_count():
    (psi,) = PsiUniform().execute(0.5)
    assert psi.resolve(7).values == [0.5] * 7


def test_psi_list_node_keeps_its_length_and_names_the_input_on_bad_text():
    (psi,) = PsiFromList().execute("0.9, 0.8,0.7")
    assert psi.values == [0.9, 0.8, 0.7]
    with pytest.raises(ValueError, match="steps"):
        psi.resolve(10)
    with pytest.raises(ValueError, match="input 'values'"):
        PsiFromList().execute("0.9, lots")


def test_psi_files_are_listed_from_every_folder_and_found_by_name(tmp_path):
    a, b = tmp_path / "models", tmp_path / "output"
    (a / "sd35").mkdir(parents=True)
    b.mkdir()
    Psi([0.5, 0.4]).save(a / "sd35" / "psi.json")
    Psi([0.3]).save(b / "mine.json")
    (b / "notes.txt").write_text("x")
    assert list_psi_files([str(a), str(b)]) == ["mine.json", "sd35/psi.json"]
    assert Psi.load(find_psi_file("sd35/psi.json", [str(a), str(b)], "n")).values == [0.5, 0.4]


def test_psi_file_lookup_refuses_paths_outside_its_folders(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="input 'psi_file'.*not found"):
        find_psi_file("../secret.json", [str(tmp_path / "models")], "DenseGRPO Load ψ")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("my lora", "my_lora"),
        ("../../x", "x"),
        ("..", "densegrpo"),
        ("a/b\\c", "c"),
        (".hidden", "hidden"),
        ("", "densegrpo"),
    ],
)
def test_sanitize_name_keeps_files_inside_one_folder(name, expected):
    assert bridge.sanitize_name(name) == expected


def test_parse_prompts_takes_one_prompt_per_line_and_refuses_empty_text():
    assert bridge.parse_prompts("a cat\n\n# comment\n  a dog  ", "n") == ["a cat", "a dog"]
    with pytest.raises(ValueError, match="input 'prompts' is empty"):
        bridge.parse_prompts(" \n# only a comment", "DenseGRPO Calibrate ψ")


def test_group_size_below_two_is_refused():
    with pytest.raises(ValueError, match="input 'group_size' must be >= 2"):
        bridge.check_group_size(1, "node")


def test_latent_with_the_wrong_channel_count_is_refused():
    bridge.check_latent_channels(torch.zeros(1, 16, 8, 8), 16, "node")
    with pytest.raises(ValueError, match="input 'latent_image' has 4 channels but this model's latents have 16"):
        bridge.check_latent_channels(torch.zeros(1, 4, 8, 8), 16, "node")


class _Format:  # stands in for a comfy.latent_formats format (only the two fields model_latent reads)
    def __init__(self, channels, dims):
        self.latent_channels, self.latent_dimensions = channels, dims


class _Model:  # stands in for a ModelPatcher's get_model_object("latent_format")
    def __init__(self, fmt):
        self.fmt = fmt

    def get_model_object(self, name):
        assert name == "latent_format"
        return self.fmt


def test_a_3d_latent_format_gets_the_frame_axis_its_sampler_adds():
    """Qwen-Image (Wan 2.1 format, latent_dimensions 3): an image latent from EmptySD3LatentImage becomes
    (B, 16, 1, H, W), as comfy.sample.fix_empty_latent_channels makes it; a 2-D format keeps (B, C, H, W)."""
    qwen, sd3 = _Model(_Format(16, 3)), _Model(_Format(16, 2))
    assert bridge.model_latent(qwen, torch.zeros(1, 16, 8, 8), "node").shape == (1, 16, 1, 8, 8)
    assert bridge.model_latent(qwen, torch.zeros(1, 16, 1, 8, 8), "node").shape == (1, 16, 1, 8, 8)
    assert bridge.model_latent(sd3, torch.zeros(1, 16, 8, 8), "node").shape == (1, 16, 8, 8)


def test_a_latent_of_the_wrong_layout_names_the_layout_the_model_needs():
    with pytest.raises(ValueError, match=r"'latent_image' must be a batch of latents \(B, C, T, H, W\).*\(16, 8, 8\)"):
        bridge.model_latent(_Model(_Format(16, 3)), torch.zeros(16, 8, 8), "node")
    with pytest.raises(ValueError, match=r"must be a batch of latents \(B, C, H, W\).*\(1, 16, 1, 8, 8\)"):
        bridge.model_latent(_Model(_Format(16, 2)), torch.zeros(1, 16, 1, 8, 8), "node")
    with pytest.raises(ValueError, match="has 4 channels but this model's latents have 16"):
        bridge.model_latent(_Model(_Format(16, 3)), torch.zeros(1, 4, 8, 8), "node")


def test_a_cond_comfyui_never_batches_at_other_lengths_is_padded_and_run_per_token_count():
    """Qwen-Image's c_crossattn is a CONDRegular: ComfyUI runs prompts of different token counts apart, so the job
    pads them once (prompts and negative alike, so any batch concatenates) and ComfyVelocity runs each count's
    rows unpadded: the same denoised rows as one call per prompt."""
    from nodes.comfy_training import ENTRY_KEY, ComfyVelocity, ConditioningTable

    class Base:  # apply_model's output depends on every token, so padding would show
        def apply_model(self, x, tau, transformer_options, c_crossattn):
            per_row = (-1,) + (1,) * (x.ndim - 1)
            return x * c_crossattn.sum(dim=(1, 2)).reshape(per_row) + tau.reshape(per_row)

    a, b, neg = ({"c_crossattn": torch.randn(1, n, 4)} for n in (3, 5, 2))
    table = ConditioningTable([a, b, neg], repeatable=set())
    cond = {k: torch.cat([u, v]) for (k, u), v in zip(table.batch([0, 1, 0]).items(), table.batch([2]).values())}
    assert cond["c_crossattn"].shape == (4, 5, 4) and cond[ENTRY_KEY].tolist() == [0, 1, 0, 2]
    x, tau = torch.randn(4, 2, 1, 3, 3, requires_grad=True), torch.tensor([0.5, 0.6, 0.7, 0.8])
    v = ComfyVelocity(Base(), table)(x, tau, cond)
    rows = [a, b, a, neg]
    expected = torch.cat([ComfyVelocity(Base())(x[i : i + 1], tau[i : i + 1], rows[i]) for i in range(4)])
    torch.testing.assert_close(v, expected)
    v.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_cross_attention_cond_repeats_to_the_lcm_over_every_prompt_and_the_negative():
    from nodes.comfy_training import ConditioningTable

    a, neg = {"c_crossattn": torch.ones(1, 2, 4)}, {"c_crossattn": torch.ones(1, 3, 4)}
    table = ConditioningTable([a, neg], repeatable={"c_crossattn"})
    assert table.batch([0])["c_crossattn"].shape == table.batch([1])["c_crossattn"].shape == (1, 6, 4)


def test_image_grid_tiles_rows_and_columns():
    images = torch.rand(2, 3, 4, 5, 3)
    grid = image_grid(images, pad=1)
    assert grid.shape == (2 * 5 - 1, 3 * 6 - 1, 3)
    assert torch.equal(grid[5:9, 6:11], images[1, 1])


def test_private_copy_of_an_inference_mode_module_can_be_trained_and_shares_nothing():
    from nodes.comfy_training import clone_module

    with torch.inference_mode():
        shared = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
        shared[0].weight.mul_(1.0)  # an inference tensor, as ComfyUI's models hold
    private = clone_module(shared)
    assert not any(p.is_inference() for p in private.parameters())
    p = private[0].weight
    p.requires_grad_(True)
    private(torch.randn(2, 3)).sum().backward()
    assert p.grad is not None
    with torch.no_grad():
        p.add_(1.0)
    assert not torch.equal(p, shared[0].weight)


def test_prompt_conds_of_different_token_counts_stack_like_comfyui():
    from nodes.comfy_training import stack_kwargs

    a = {"c_crossattn": torch.ones(1, 2, 4), "y": torch.zeros(1, 3)}
    b = {"c_crossattn": torch.full((1, 3, 4), 2.0), "y": torch.ones(1, 3)}
    out = stack_kwargs([a, b, a])
    assert out["c_crossattn"].shape == (3, 6, 4) and out["y"].shape == (3, 3)
    assert torch.equal(out["c_crossattn"][1], torch.full((6, 4), 2.0))


def test_conds_with_different_constants_run_as_separate_forwards_each_with_its_own_tokens():
    """Lumina 2 / Z-Image: ComfyUI's CONDConstant `num_tokens` differs between captions of other lengths, so
    ComfyUI never batches them; the batch keeps them padded to stack, and is split back per constants group."""
    from nodes.comfy_training import ENTRY_KEY, ConditioningTable

    short, long = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    table = ConditioningTable(
        [
            {"c_crossattn": short, "num_tokens": 3},
            {"c_crossattn": long, "num_tokens": 5},
            {"c_crossattn": short, "num_tokens": 3},
        ],
        repeatable=set(),  # Lumina 2's c_crossattn is a CONDRegular
    )
    cond = table.batch([0, 1, 2, 1])
    assert cond["c_crossattn"].shape == (4, 5, 4) and cond[ENTRY_KEY].tolist() == [0, 1, 2, 1]
    forwards = table.forwards(cond)
    assert [(rows, kw["num_tokens"]) for rows, kw in forwards] == [([0, 2], 3), ([1, 3], 5)]
    assert torch.equal(forwards[0][1]["c_crossattn"], torch.cat([short, short]))
    assert torch.equal(forwards[1][1]["c_crossattn"], torch.cat([long, long]))


def test_conds_with_the_same_constants_batch_as_before_with_the_constants_passed():
    from nodes.comfy_training import ENTRY_KEY, ConditioningTable

    a, b = (
        {"c_crossattn": torch.ones(1, 2, 4), "frame_rate": 25},
        {"c_crossattn": torch.zeros(1, 3, 4), "frame_rate": 25},
    )
    table = ConditioningTable([a, b])
    cond = table.batch([0, 1])
    assert ENTRY_KEY not in cond and cond["c_crossattn"].shape == (2, 6, 4)  # stack_kwargs' lcm repeat
    ((rows, kwargs),) = table.forwards(cond)
    assert rows is None and kwargs["frame_rate"] == 25
