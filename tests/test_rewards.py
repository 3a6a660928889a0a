"""The reward registry, specs and weighted sums, the weight-free rewards, input checks, caching, and the torch
CLIP preprocessing against the reference processors. Model rewards: test_reward_models.py."""

import io
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_reward_models as tiny
import torch
from PIL import Image

from densegrpo_core.rewards import (
    REWARD_REGISTRY,
    WeightedReward,
    get_reward,
    list_rewards,
    parse_reward_paths,
    parse_reward_spec,
    release_rewards,
)
from densegrpo_core.rewards.clip_preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess

PROMPTS = ["a red cat"] * 4


def brightness(images, prompts):
    """A custom reward for the module:function tests."""
    return images.mean(dim=(1, 2, 3))


def one_uint8_level(std) -> float:
    """The references quantise resized pixels to uint8: one level, in normalised units, plus float slack."""
    return 1.05 / 255 / min(std)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_every_builtin_reward_with_what_it_needs():
    assert set(REWARD_REGISTRY) == {
        "pickscore",
        "pickscore_flowgrpo",
        "hpsv2",
        "aesthetic",
        "clipscore",
        "jpeg_compressibility",
        "jpeg_incompressibility",
        "toy",
    }
    for spec in list_rewards():
        assert spec.display_name and spec.description and spec.formula and spec.upstream
        assert spec.needs_path == bool(spec.expected_files) == (spec.folder is not None) == (spec.path_kind != "none")


def test_importing_the_rewards_package_loads_no_model_library():
    code = "import densegrpo_core.rewards, sys; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent
    )
    assert not {"transformers", "open_clip", "PIL"} & set(out.stdout.split())


def test_toy_and_module_function_rewards_still_resolve():
    assert get_reward("toy").name == "toy"
    r = get_reward("test_rewards:brightness")
    images = tiny.random_images(4)
    assert torch.allclose(r(images, PROMPTS), images.mean(dim=(1, 2, 3)))


def test_unknown_reward_names_the_registry():
    with pytest.raises(ValueError, match="unknown reward 'pickscor'.*pickscore, .*hpsv2"):
        get_reward("pickscor")


@pytest.mark.parametrize("name", ["pickscore", "hpsv2", "aesthetic", "clipscore"])
def test_file_reward_without_path_says_where_the_files_go(name):
    folder = REWARD_REGISTRY[name].folder
    with pytest.raises(ValueError, match=f"needs its model files.*models/reward_models/{folder}/"):
        get_reward(name)


def test_path_for_a_reward_without_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'jpeg_compressibility' takes no model files"):
        get_reward("jpeg_compressibility", str(tmp_path))


# -------------------------------------------------------------------------------------------- weighted sums
def test_weighted_spec_string_and_dict_parse_alike():
    assert parse_reward_spec("pickscore=1.0, aesthetic=0.5") == {"pickscore": 1.0, "aesthetic": 0.5}
    assert parse_reward_spec({"pickscore": 1, "aesthetic": "0.5"}) == {"pickscore": 1.0, "aesthetic": 0.5}
    assert parse_reward_spec("pickscore") == "pickscore"
    assert parse_reward_spec("my.module:fn") == "my.module:fn"


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("pickscore=high", "weight of 'pickscore' must be a number"),
        ({"toy": float("nan")}, "must be finite"),
        ({}, "at least one term"),
        ("=1", "empty term"),
        (3, "reward must be a name"),
    ],
)
def test_bad_weighted_specs_are_refused(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_reward_spec(spec)


def test_weighted_reward_is_the_weighted_sum_and_reports_each_term():
    images = tiny.random_images(4)
    r = get_reward("jpeg_incompressibility=0.5,test_rewards:brightness=2")
    total = r(images, PROMPTS)
    assert isinstance(r, WeightedReward) and set(r.last_terms) == {"jpeg_incompressibility", "test_rewards:brightness"}
    assert torch.allclose(r.last_terms["test_rewards:brightness"], images.mean(dim=(1, 2, 3)))
    assert torch.allclose(
        total, 0.5 * r.last_terms["jpeg_incompressibility"] + 2 * r.last_terms["test_rewards:brightness"]
    )
    assert total.dtype == torch.float32 and total.shape == (4,)


def test_reward_paths_parse_one_path_or_name_equals_path():
    assert parse_reward_paths("/models/reward_models/pickscore") == "/models/reward_models/pickscore"
    assert parse_reward_paths("pickscore=/a,aesthetic=/b") == {"pickscore": "/a", "aesthetic": "/b"}
    assert parse_reward_paths("/odd=folder") == "/odd=folder"  # not a reward name: one path
    assert parse_reward_paths(None) is None


def test_one_path_goes_to_the_only_term_that_needs_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward 'aesthetic'"):
        get_reward("aesthetic=1,jpeg_compressibility=0.1", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"give the paths as \{name: path\}"):
        get_reward("aesthetic=1,pickscore=1", str(tmp_path))
    with pytest.raises(ValueError, match="not terms of the reward"):
        get_reward("jpeg_compressibility=1", {"pickscore": str(tmp_path)})


# ----------------------------------------------------------------------------------------------------- jpeg
def test_jpeg_incompressibility_is_the_quality_95_jpeg_size_in_kb():
    images = tiny.random_images(3, size=24)
    sizes = []
    for img in (images * 255).round().to(torch.uint8).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell() / 1000)
    assert torch.allclose(get_reward("jpeg_incompressibility")(images, ["x"] * 3), torch.tensor(sizes))
    assert torch.allclose(get_reward("jpeg_compressibility")(images, ["x"] * 3), -torch.tensor(sizes))


def test_flat_images_are_more_compressible_than_noise():
    flat = torch.full((1, 32, 32, 3), 0.5)
    r = get_reward("jpeg_compressibility")
    assert r(flat, ["x"])[0] > r(tiny.random_images(1), ["x"])[0]


# ----------------------------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "images, prompts, msg",
    [
        (torch.rand(2, 3, 8, 8), ["a", "b"], r"images must be a \(B, H, W, 3\) tensor, got \(2, 3, 8, 8\)"),
        (torch.rand(8, 8, 3), ["a"], r"images must be a \(B, H, W, 3\) tensor"),
        (torch.rand(2, 8, 8, 3) * 255, ["a", "b"], r"images must lie in \[0, 1\]"),
        (torch.full((1, 8, 8, 3), float("nan")), ["a"], "images must be finite"),
        (torch.rand(2, 8, 8, 3), ["a"], r"prompts must be a list of one prompt per image \(2\), got 1 prompts"),
        (torch.rand(1, 8, 8, 3), "a", "got a single string"),
    ],
)
@pytest.mark.parametrize("reward", ["jpeg_compressibility", "jpeg_incompressibility=1,toy=0"])
def test_wrong_images_or_prompts_are_named_in_the_error(reward, images, prompts, msg):
    with pytest.raises(ValueError, match=msg):
        get_reward(reward)(images, prompts)


# ------------------------------------------------------------------------------------------------ caching
def test_models_are_cached_per_path_device_dtype_until_released(tmp_path):
    folder = tiny.write_clip_folder(tmp_path / "clip")
    a, b = get_reward("clipscore", folder, device="cpu"), get_reward("clipscore", folder, device="cpu", batch_size=2)
    assert a.clip is b.clip
    assert get_reward("clipscore", folder, device="cpu", dtype="bfloat16").clip is not a.clip
    assert release_rewards() >= 2
    assert get_reward("clipscore", folder, device="cpu").clip is not a.clip


def test_bad_batch_size_and_dtype_are_refused(tmp_path):
    folder = tiny.write_clip_folder(tmp_path / "clip")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        get_reward("clipscore", folder, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="reward dtype must be one of"):
        get_reward("clipscore", folder, device="cpu", dtype="float8")


# ----------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("h, w", [(40, 59), (59, 40), (16, 16), (100, 73)])
def test_hf_preprocess_matches_clip_image_processor_on_a_known_image(h, w):
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    img = tiny.known_image(h, w)
    pil = Image.fromarray((img * 255).round().to(torch.uint8).numpy())
    kw = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ours = ClipPreprocess.from_hf_config(CLIPImageProcessorPil(**kw).to_dict())(img[None])
    for proc in (CLIPImageProcessorPil(**kw), CLIPImageProcessor(**kw)):
        ref = torch.as_tensor(np.asarray(proc(pil, return_tensors="np")["pixel_values"]))
        assert ours.shape == ref.shape == (1, 3, 32, 32)
        assert (ours - ref).abs().max() < one_uint8_level(OPENAI_CLIP_STD)
        assert (ours - ref).abs().mean() < 0.006


@pytest.mark.parametrize("mode", ["shortest", "longest"])
@pytest.mark.parametrize("h, w", [(40, 59), (59, 40), (100, 73)])
def test_open_clip_preprocess_matches_open_clip_transform_on_a_known_image(mode, h, w):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    img = tiny.known_image(h, w)
    pil = Image.fromarray((img * 255).round().to(torch.uint8).numpy())
    cfg = dict(size=32, resize_mode=mode)
    ref = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(pil)[None]
    ours = ClipPreprocess.from_open_clip_cfg(cfg)(img[None])
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().max() < one_uint8_level(OPENAI_CLIP_STD)


def test_preprocess_takes_each_models_mean_std_and_sizes():
    p = ClipPreprocess.from_hf_config(
        {
            "size": {"shortest_edge": 20},
            "crop_size": {"height": 16, "width": 16},
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.25, 0.25, 0.25],
        }
    )
    out = p(torch.full((2, 30, 40, 3), 0.75))
    assert out.shape == (2, 3, 16, 16) and torch.allclose(out, torch.ones_like(out))
    q = ClipPreprocess.from_open_clip_cfg({"size": 224})
    assert (q.mean, q.std, q.size, q.mode) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, (224, 224), "shortest")


def test_longest_edge_preprocess_pads_with_black_like_hpsv2():
    p = ClipPreprocess.from_open_clip_cfg({"size": 8, "resize_mode": "longest"})
    out = p(torch.ones(1, 4, 8, 3)) * torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1) + torch.tensor(
        OPENAI_CLIP_MEAN
    ).view(1, 3, 1, 1)  # back to pixel values
    assert torch.allclose(out[..., 2:6, :], torch.ones(1, 3, 4, 8), atol=1e-6)
    assert torch.allclose(out[..., :2, :], torch.zeros(1, 3, 2, 8), atol=1e-6)


# ------------------------------------------------------------------------------------------ network guard
def test_network_is_guarded_in_tests(no_network):
    with pytest.raises(ConnectionRefusedError, match="network access in a test"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    no_network.clear()  # the attempt was the point of this test
