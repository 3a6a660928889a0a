import copy
import os

import pytest
import torch
import torch.nn as nn

from densegrpo_core.models import lora
from densegrpo_core.models.lora import (
    adapters_disabled,
    inject_lora,
    load_lora,
    lora_parameters,
    lora_state_dict,
    lora_targets,
    read_lora_metadata,
    save_lora,
)

WIDTH = 8


class _Attention(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)


class _MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)


class _Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.attn = _Attention(width)
        self.mlp = _MLP(width)
        self.adaLN_modulation = nn.Linear(width, 2 * width)


class ToyStandIn(nn.Module):
    """The toy DiT's LoRA-relevant module names (blocks.N.attn.qkv, …) around a tiny token mixer."""

    def __init__(self, width=WIDTH, depth=2):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList([_Block(width) for _ in range(depth)])
        self.out = nn.Linear(width, 4)

    def forward(self, x):  # x (B, N, 4)
        h = self.embed(x)  # (B, N, D)
        for block in self.blocks:
            shift, scale = block.adaLN_modulation(h.mean(dim=1)).chunk(2, dim=-1)  # (B, D) each
            q, k, v = block.attn.qkv(h).chunk(3, dim=-1)  # (B, N, D) each
            attn = torch.softmax(q @ k.transpose(1, 2) / WIDTH**0.5, dim=-1)  # (B, N, N)
            h = h + block.attn.proj(attn @ v)
            h = h + block.mlp.fc2(torch.tanh(block.mlp.fc1(h * (1 + scale[:, None]) + shift[:, None])))
        return self.out(h)


def _toy(seed=0):
    torch.manual_seed(seed)
    return ToyStandIn()


@pytest.fixture
def x():
    return torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))


def _perturb(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_inject_lora_leaves_output_unchanged(x):
    model = _toy()
    before = model(x)
    inject_lora(model, "toy", rank=4, alpha=8)
    assert torch.equal(model(x), before)


def test_inject_lora_makes_only_lora_weights_trainable():
    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    assert len(trainable) == 2 * 5 * 2  # (A, B) × 5 targets × 2 blocks
    assert {id(p) for p in lora_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}


def test_inject_lora_is_seeded_and_leaves_global_rng_alone():
    a, b = _toy(), _toy()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    inject_lora(a, "toy", rank=4, alpha=8, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    inject_lora(b, "toy", rank=4, alpha=8, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(lora_parameters(a), lora_parameters(b)))


def test_adapters_disabled_gives_base_output_and_restores_the_adapter(x):
    model = _toy()
    base = model(x)
    inject_lora(model, "toy", rank=4, alpha=8)
    _perturb(model)
    adapted = model(x)
    assert not torch.allclose(adapted, base)
    with adapters_disabled(model):
        assert torch.equal(model(x), base)
    assert torch.equal(model(x), adapted)
    assert all(p.requires_grad for p in lora_parameters(model))


def test_adapters_disabled_restores_the_adapter_after_an_exception(x):
    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    _perturb(model)
    adapted = model(x)
    with pytest.raises(RuntimeError, match="boom"):
        with adapters_disabled(model):
            raise RuntimeError("boom")
    assert torch.equal(model(x), adapted)


class MMDiTStandIn(nn.Module):
    """ComfyUI MMDiT names: a Conv2d patch embedder `x_embedder.proj` and one pre-only last joint block."""

    def __init__(self, width=WIDTH):
        super().__init__()
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(4, width, 2, stride=2)
        self.context_embedder = nn.Linear(16, width)
        self.joint_blocks = nn.ModuleList()
        for last in (False, True):
            joint = nn.Module()
            joint.x_block = _Block(width)
            joint.context_block = nn.Module()
            joint.context_block.attn = nn.Module()
            joint.context_block.attn.qkv = nn.Linear(width, 3 * width)
            if not last:
                joint.context_block.attn.proj = nn.Linear(width, width)
                joint.context_block.mlp = _MLP(width)
            self.joint_blocks.append(joint)


def test_mmdit_preset_selects_the_attention_projections_and_not_the_conv_x_embedder_proj():
    """Flow-GRPO's reference targets in ComfyUI's names: attention qkv/proj of both streams, no MLP."""
    names = lora_targets(MMDiTStandIn(), "mmdit")
    assert "x_embedder.proj" not in names
    assert "joint_blocks.0.x_block.attn.proj" in names
    assert sorted(names) == sorted(
        [
            "joint_blocks.0.context_block.attn.qkv",
            "joint_blocks.0.context_block.attn.proj",
            "joint_blocks.0.x_block.attn.qkv",
            "joint_blocks.0.x_block.attn.proj",
            "joint_blocks.1.context_block.attn.qkv",
            "joint_blocks.1.x_block.attn.qkv",
            "joint_blocks.1.x_block.attn.proj",
        ]
    )


def test_injecting_mmdit_leaves_the_conv_x_embedder_proj_untouched():
    model = inject_lora(MMDiTStandIn(), "auto", rank=2, alpha=2)
    assert type(model.x_embedder.proj) is nn.Conv2d
    assert not any(k.startswith("diffusion_model.x_embedder") for k in lora_state_dict(model))
    assert model._densegrpo_lora_targets == "mmdit"


class FluxStandIn(nn.Module):
    """ComfyUI Flux names: double_blocks.N.{img,txt}_{attn,mlp}, single_blocks.N.linear{1,2}, plus non-targets."""

    def __init__(self, width=WIDTH):
        super().__init__()
        self.img_in = nn.Linear(4, width)
        self.double_blocks = nn.ModuleList([nn.Module()])
        for stream in ("img", "txt"):
            setattr(self.double_blocks[0], f"{stream}_attn", _Attention(width))
            setattr(
                self.double_blocks[0],
                f"{stream}_mlp",
                nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)),
            )
            setattr(self.double_blocks[0], f"{stream}_mod", nn.Module())
            getattr(self.double_blocks[0], f"{stream}_mod").lin = nn.Linear(width, 6 * width)
        self.single_blocks = nn.ModuleList([nn.Module()])
        self.single_blocks[0].linear1 = nn.Linear(width, 5 * width)
        self.single_blocks[0].linear2 = nn.Linear(3 * width, width)


def test_flux_preset_selects_attention_mlp_and_single_block_linears():
    assert sorted(lora_targets(FluxStandIn(), "auto")) == sorted(
        [
            "double_blocks.0.img_attn.qkv",
            "double_blocks.0.img_attn.proj",
            "double_blocks.0.img_mlp.0",
            "double_blocks.0.img_mlp.2",
            "double_blocks.0.txt_attn.qkv",
            "double_blocks.0.txt_attn.proj",
            "double_blocks.0.txt_mlp.0",
            "double_blocks.0.txt_mlp.2",
            "single_blocks.0.linear1",
            "single_blocks.0.linear2",
        ]
    )


def test_lora_targets_without_a_match_names_the_preset():
    with pytest.raises(ValueError, match="'flux'"):
        lora_targets(_toy(), "flux")


def test_lora_targets_accepts_a_full_name_regex():
    assert lora_targets(_toy(), r"blocks\.1\.mlp\.fc\d") == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]


def test_save_then_load_into_a_fresh_model_reproduces_outputs_exactly(tmp_path, x):
    base = _toy()
    fresh = copy.deepcopy(base)
    trained = inject_lora(base, "toy", rank=4, alpha=8, seed=0)
    _perturb(trained)
    path = tmp_path / "lora.safetensors"
    save_lora(path, trained, {"iteration": 3})
    inject_lora(fresh, "toy", rank=4, alpha=8, seed=99)
    assert not torch.equal(fresh(x), trained(x))
    load_lora(path, fresh)
    assert torch.equal(fresh(x), trained(x))


def test_saved_keys_are_the_comfyui_original_model_form_with_alpha(tmp_path):
    from safetensors.torch import load_file

    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {})
    tensors = load_file(path)
    paths = [
        f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation")
    ]
    assert set(tensors) == {
        f"diffusion_model.{p}.{part}" for p in paths for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert tensors["diffusion_model.blocks.0.attn.qkv.lora_down.weight"].shape == (4, WIDTH)  # (r, in)
    assert tensors["diffusion_model.blocks.0.attn.qkv.lora_up.weight"].shape == (3 * WIDTH, 4)  # (out, r)
    alpha = tensors["diffusion_model.blocks.0.attn.qkv.alpha"]
    assert alpha.shape == () and alpha.dtype == torch.float32 and alpha.item() == 8.0


def test_save_in_half_precision_stores_half_weights_and_float32_alpha(tmp_path):
    from safetensors.torch import load_file

    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {}, dtype=torch.bfloat16)
    dtypes = {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha": v.dtype for k, v in load_file(path).items()}
    assert dtypes == {"lora_down": torch.bfloat16, "lora_up": torch.bfloat16, "alpha": torch.float32}


def test_metadata_round_trips_as_strings(tmp_path):
    model = inject_lora(_toy(), "auto", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {"psi": [0.5, 0.25], "reward": "toy", "iteration": 12, "config_hash": "ab12", "rank": 4})
    expected = {
        "densegrpo.format": "densegrpo.lora/1",
        "rank": "4",
        "alpha": "8.0",
        "targets": "toy",
        "psi": "[0.5, 0.25]",
        "reward": "toy",
        "iteration": "12",
        "config_hash": "ab12",
    }
    assert read_lora_metadata(path) == expected
    assert load_lora(path, inject_lora(_toy(), "toy", rank=4, alpha=8)) == expected


def test_save_rejects_metadata_rank_that_disagrees_with_the_model(tmp_path):
    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    with pytest.raises(ValueError, match="rank"):
        save_lora(tmp_path / "lora.safetensors", model, {"rank": 8})


def _failing_save_file(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"half-written")
    raise OSError("disk full")


def test_failed_write_leaves_neither_the_file_nor_a_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_lora(tmp_path / "lora.safetensors", model, {})
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_previous_file(tmp_path, monkeypatch, x):
    import safetensors.torch

    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {"iteration": 1})
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file)
    with pytest.raises(OSError):
        save_lora(path, model, {"iteration": 2})
    assert os.listdir(tmp_path) == ["lora.safetensors"]
    assert read_lora_metadata(path)["iteration"] == "1"


def _edited_file(tmp_path, edit):
    from safetensors.torch import load_file, save_file

    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {})
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return path


def test_loading_a_wrong_shape_raises_naming_the_key(tmp_path):
    key = "diffusion_model.blocks.1.mlp.fc2.lora_up.weight"
    path = _edited_file(tmp_path, lambda t: t.__setitem__(key, torch.zeros(WIDTH + 1, 4)))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_lora(path, inject_lora(_toy(), "toy", rank=4, alpha=8))


def test_loading_a_file_with_a_missing_key_raises_naming_the_key(tmp_path):
    key = "diffusion_model.blocks.0.attn.proj.lora_down.weight"
    path = _edited_file(tmp_path, lambda t: t.pop(key))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_lora(path, inject_lora(_toy(), "toy", rank=4, alpha=8))


def test_loading_a_file_with_an_unexpected_key_raises_naming_the_key(tmp_path):
    key = "diffusion_model.final.lora_up.weight"
    path = _edited_file(tmp_path, lambda t: t.__setitem__(key, torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_lora(path, inject_lora(_toy(), "toy", rank=4, alpha=8))


def test_loading_into_a_model_of_another_rank_raises_a_rank_error(tmp_path):
    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {})
    with pytest.raises(ValueError, match="rank 4.*rank 2"):
        load_lora(path, inject_lora(_toy(), "toy", rank=2, alpha=8))


def test_loading_a_pickle_file_raises_a_value_error_naming_the_path(tmp_path):
    path = tmp_path / "lora.safetensors"
    torch.save({"diffusion_model.blocks.0.attn.qkv.lora_up.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_lora(path, inject_lora(_toy(), "toy", rank=4, alpha=8))


def test_loading_a_missing_path_raises_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_lora(path, inject_lora(_toy(), "toy", rank=4, alpha=8))


def test_loading_into_a_model_without_lora_asks_for_injection(tmp_path):
    model = inject_lora(_toy(), "toy", rank=4, alpha=8)
    path = tmp_path / "lora.safetensors"
    save_lora(path, model, {})
    with pytest.raises(ValueError, match="inject_lora"):
        load_lora(path, _toy())


def test_presets_are_full_name_regexes():
    import re

    for name, pattern in lora.TARGET_PRESETS.items():
        assert re.fullmatch(pattern, "x_embedder.proj") is None, name
