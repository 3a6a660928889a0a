"""PickScore, HPSv2, the LAION aesthetic predictor and CLIPScore on tiny random models of the real classes,
written in the published checkpoints' layouts and loaded through the production loaders: the score formulas
against reference computations, float32 (B,) outputs, determinism, batch-size invariance, and a precise
error for every missing file, wrong layout or unsafe pickle."""

import argparse
import json
import os

import numpy as np
import pytest
import tiny_reward_models as tiny
import torch
import torch.nn.functional as F
from PIL import Image

from densegrpo_core.rewards import get_reward
from densegrpo_core.rewards.hpsv2 import _model_and_preprocess_cfg

PROMPTS = ["a red cat", "a red cat", "a blue dog", "a blue dog", "a cat", "a cat", "red", "a blue cat"]
TEXT_REWARDS = ["pickscore", "pickscore_flowgrpo", "hpsv2", "clipscore"]
MODEL_REWARDS = TEXT_REWARDS + ["aesthetic"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward_models")
    pick = tiny.write_clip_folder(root / "pickscore", seed=1, processor_subdir="processor")
    return {
        "pickscore": pick,
        "pickscore_flowgrpo": pick,
        "clipscore": tiny.write_clip_folder(root / "clipscore"),
        "hpsv2": tiny.write_hps_folder(root / "hpsv2"),
        "aesthetic": tiny.write_aesthetic_folder(root / "aesthetic"),
    }


def images_uint8(n: int, seed: int = 0) -> torch.Tensor:
    """Images at the models' input size, exact in uint8, so the reference processors see the same pixels."""
    return (tiny.random_images(n, seed=seed) * 255).round() / 255


def pil_images(images: torch.Tensor) -> list:
    return [Image.fromarray(img) for img in (images * 255).round().to(torch.uint8).numpy()]


def reference_clip_embeddings(folder, images, prompts, processor_dir=None):
    """Image and text embeddings as the upstream scorers compute them: CLIPModel + the reference processors."""
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor_dir = processor_dir or folder
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(str(processor_dir), local_files_only=True)(
        pil_images(images), return_tensors="pt"
    )["pixel_values"]
    text = CLIPTokenizer.from_pretrained(str(processor_dir), local_files_only=True)(
        prompts, padding=True, truncation=True, max_length=tiny.TEXT_CONTEXT, return_tensors="pt"
    )
    with torch.no_grad():
        img = model.get_image_features(pixel_values=torch.as_tensor(np.asarray(pixels)))
        txt = model.get_text_features(**text)
    pooled = [e if isinstance(e, torch.Tensor) else e.pooler_output for e in (img, txt)]
    return pooled[0], pooled[1], model.logit_scale.exp().item()


# ----------------------------------------------------------------------------------------- every model reward
@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_model_reward_gives_one_float32_score_per_image_deterministically(name, folders):
    images = images_uint8(8)
    r = get_reward(name, folders[name], device="cpu")
    scores = r(images, PROMPTS)
    assert scores.shape == (8,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert torch.equal(scores, get_reward(name, folders[name], device="cpu")(images, PROMPTS))


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_model_reward_does_not_depend_on_batch_size(name, folders):
    images = images_uint8(8)
    one = get_reward(name, folders[name], device="cpu", batch_size=1)(images, PROMPTS)
    eight = get_reward(name, folders[name], device="cpu", batch_size=8)(images, PROMPTS)
    three = get_reward(name, folders[name], device="cpu", batch_size=3)(images, PROMPTS)
    assert torch.allclose(one, eight, rtol=0, atol=1e-5) and torch.allclose(three, eight, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", TEXT_REWARDS)
def test_text_conditioned_rewards_depend_on_the_prompt(name, folders):
    images = images_uint8(1).expand(2, -1, -1, -1)
    scores = get_reward(name, folders[name], device="cpu")(images, ["a red cat", "a blue dog"])
    assert (scores[0] - scores[1]).abs() > 1e-6


def test_aesthetic_ignores_the_prompt(folders):
    images = images_uint8(1).expand(2, -1, -1, -1)
    scores = get_reward("aesthetic", folders["aesthetic"], device="cpu")(images, ["a red cat", "a blue dog"])
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_model_reward_in_bfloat16_still_returns_float32(name, folders):
    scores = get_reward(name, folders[name], device="cpu", dtype="bfloat16")(images_uint8(2), PROMPTS[:2])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_model_reward_scores_other_image_sizes(name, folders):
    scores = get_reward(name, folders[name], device="cpu")(tiny.random_images(2, size=16), PROMPTS[:2])
    assert scores.shape == (2,)
    scores = get_reward(name, folders[name], device="cpu")(torch.rand(2, 48, 40, 3), PROMPTS[:2])
    assert scores.shape == (2,)


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_model_reward_names_wrong_prompt_count(name, folders):
    with pytest.raises(ValueError, match=r"prompts must be a list of one prompt per image \(3\), got 2"):
        get_reward(name, folders[name], device="cpu")(images_uint8(3), PROMPTS[:2])


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_a_callers_autocast_does_not_change_the_scores(name, folders):
    r = get_reward(name, folders[name], device="cpu")
    plain = r(images_uint8(4), PROMPTS[:4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(r(images_uint8(4), PROMPTS[:4]), plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_on_cuda_models_run_in_half_precision_and_score_images_there(name, folders):
    r = get_reward(name, folders[name])  # default device: CUDA
    images = images_uint8(4).cuda()
    scores = r(images, PROMPTS[:4])
    assert scores.is_cuda and scores.dtype == torch.float32
    fp32 = get_reward(name, folders[name], device="cpu")(images.cpu(), PROMPTS[:4])
    assert torch.allclose(scores.cpu(), fp32, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------------- the formulas
def test_pickscore_is_logit_scale_times_cosine_as_the_reference_computes_it(folders):
    images = images_uint8(4)
    img, txt, scale = reference_clip_embeddings(
        folders["pickscore"], images, PROMPTS[:4], folders["pickscore"] / "processor"
    )
    expected = scale * (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)
    scores = get_reward("pickscore", folders["pickscore"], device="cpu")(images, PROMPTS[:4])
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_pickscore_flowgrpo_is_pickscore_over_26(folders):
    images = images_uint8(4)
    plain = get_reward("pickscore", folders["pickscore"], device="cpu")(images, PROMPTS[:4])
    scaled = get_reward("pickscore_flowgrpo", folders["pickscore"], device="cpu")(images, PROMPTS[:4])
    assert torch.allclose(scaled, plain / 26)


def test_pickscore_processor_files_may_sit_beside_the_model(folders):
    images = images_uint8(8)
    pick = get_reward("pickscore", folders["clipscore"], device="cpu")  # processor files beside the model
    cosine = pick(images, PROMPTS) / pick.clip.logit_scale
    clipscore = get_reward("clipscore", folders["clipscore"], device="cpu")(images, PROMPTS)
    assert torch.allclose(2.5 * cosine.clamp(min=0), clipscore, atol=1e-5)


def test_clipscore_is_2_5_times_the_clipped_cosine(folders):
    images = images_uint8(8)
    img, txt, _ = reference_clip_embeddings(folders["clipscore"], images, PROMPTS)
    expected = 2.5 * (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).clamp(min=0)
    scores = get_reward("clipscore", folders["clipscore"], device="cpu")(images, PROMPTS)
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_hpsv2_is_the_cosine_of_open_clip_embeddings_as_hpsv2_scores(folders):
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model = CLIP(**tiny.HPS_MODEL_CFG).eval()
    model.load_state_dict(torch.load(folders["hpsv2"] / tiny.HPS_FILE, weights_only=True)["state_dict"])
    images = images_uint8(4)
    transform = image_transform_v2(PreprocessCfg(size=tiny.IMAGE_SIZE, resize_mode="longest"), is_train=False)
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(p) for p in pil_images(images)]), normalize=True)
        txt = model.encode_text(SimpleTokenizer(context_length=tiny.TEXT_CONTEXT)(PROMPTS[:4]), normalize=True)
    expected = torch.diagonal(img @ txt.T)
    scores = get_reward("hpsv2", folders["hpsv2"], device="cpu")(images, PROMPTS[:4])
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_hpsv2_reads_a_safetensors_checkpoint_and_the_checkpoint_file_itself(folders, tmp_path):
    images = images_uint8(2)
    pt = get_reward("hpsv2", folders["hpsv2"], device="cpu")(images, PROMPTS[:2])
    st_folder = tiny.write_hps_folder(tmp_path / "st", safetensors=True)
    st = get_reward("hpsv2", st_folder, device="cpu")(images, PROMPTS[:2])
    by_file = get_reward("hpsv2", folders["hpsv2"] / tiny.HPS_FILE, device="cpu")(images, PROMPTS[:2])
    assert torch.equal(pt, st) and torch.equal(pt, by_file)


def test_hpsv2_without_open_clip_config_builds_vit_h_14():
    model_cfg, preprocess_cfg = _model_and_preprocess_cfg(None)
    assert model_cfg["embed_dim"] == 1024 and model_cfg["vision_cfg"]["width"] == 1280
    assert model_cfg["vision_cfg"]["patch_size"] == 14 and preprocess_cfg == {}


def test_aesthetic_is_the_mlp_of_the_normalised_clip_image_embedding(folders):
    from densegrpo_core.rewards.aesthetic import AestheticHead

    images = images_uint8(4)
    img, _, _ = reference_clip_embeddings(folders["aesthetic"] / "clip", images, PROMPTS[:4])
    head = AestheticHead(tiny.PROJECTION_DIM).eval()
    head.load_state_dict(torch.load(folders["aesthetic"] / tiny.HEAD_FILE, weights_only=True))
    with torch.no_grad():
        expected = head(F.normalize(img, dim=-1))
    scores = get_reward("aesthetic", folders["aesthetic"], device="cpu")(images, PROMPTS[:4])
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_aesthetic_head_keys_are_the_upstream_ones():
    assert list(tiny.aesthetic_head_state()) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def test_aesthetic_path_may_name_the_head_with_clip_files_beside_it(tmp_path, folders):
    from safetensors.torch import save_file

    folder = tiny.write_clip_folder(tmp_path / "flat")
    save_file(tiny.aesthetic_head_state(), str(folder / "sac+logos+ava1-l14-linearMSE.safetensors"))
    images = images_uint8(2)
    head = folder / "sac+logos+ava1-l14-linearMSE.safetensors"
    flat = get_reward("aesthetic", head, device="cpu")(images, PROMPTS[:2])
    nested = get_reward("aesthetic", folders["aesthetic"], device="cpu")(images, PROMPTS[:2])
    assert torch.allclose(flat, nested)  # same seeds: same CLIP, same head


# ------------------------------------------------------------------------------------------------- errors
def test_missing_path_is_named_with_where_the_files_go(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'} does not exist.*models/reward_models/pickscore/"):
        get_reward("pickscore", tmp_path / "nope", device="cpu")


def test_clip_folder_without_weights_lists_the_weight_files(tmp_path):
    folder = tiny.write_clip_folder(tmp_path / "c")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors, .*pytorch_model.bin"):
        get_reward("clipscore", folder, device="cpu")


def test_clip_folder_without_tokenizer_names_the_tokenizer_files(tmp_path):
    folder = tiny.write_clip_model(tmp_path / "c")
    tiny.write_processor(folder, tokenizer=False)
    with pytest.raises(FileNotFoundError, match=r"no processor files in .*tokenizer.json \(or vocab.json \+ merges"):
        get_reward("pickscore", folder, device="cpu")


def test_aesthetic_needs_no_tokenizer(tmp_path):
    folder = tmp_path / "a"
    tiny.write_clip_model(folder / "clip")
    tiny.write_processor(folder / "clip", tokenizer=False)
    torch.save(tiny.aesthetic_head_state(), folder / tiny.HEAD_FILE)
    assert get_reward("aesthetic", folder, device="cpu")(images_uint8(1), ["x"]).shape == (1,)


def test_folder_of_another_model_type_is_refused(tmp_path):
    folder = tiny.write_clip_folder(tmp_path / "c")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip"}))
    with pytest.raises(ValueError, match="describes a 'siglip' model; expected a CLIP checkpoint"):
        get_reward("clipscore", folder, device="cpu")


def test_pickscore_pointed_at_an_hps_folder_says_what_a_clip_folder_holds(folders):
    with pytest.raises(FileNotFoundError, match="no config.json in .*expected a transformers CLIP folder"):
        get_reward("pickscore", folders["hpsv2"], device="cpu")


def test_hps_folder_without_checkpoint_names_the_hps_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no HPS checkpoint in .*HPS_v2.1_compressed.pt.*reward_models/hpsv2/"):
        get_reward("hpsv2", tmp_path, device="cpu")


def test_aesthetic_folder_without_head_or_clip_says_which(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="no aesthetic head in .*sac\\+logos\\+ava1-l14-linearMSE.pth"):
        get_reward("aesthetic", folders["clipscore"], device="cpu")
    torch.save(tiny.aesthetic_head_state(), tmp_path / tiny.HEAD_FILE)
    with pytest.raises(FileNotFoundError, match="no CLIP model beside the head.*clip-vit-large-patch14"):
        get_reward("aesthetic", tmp_path, device="cpu")


def test_aesthetic_head_width_must_match_the_clip_projection_dim(tmp_path):
    folder = tmp_path / "a"
    tiny.write_clip_folder(folder / "clip")
    torch.save(tiny.aesthetic_head_state(in_dim=768), folder / tiny.HEAD_FILE)
    with pytest.raises(ValueError, match="takes 768-wide embeddings but the CLIP model .* projection dim 24"):
        get_reward("aesthetic", folder, device="cpu")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from open_clip.model import CLIP

    folder = tiny.write_hps_folder(tmp_path / "h")
    other = {**tiny.HPS_MODEL_CFG, "embed_dim": 16}
    torch.save({"state_dict": CLIP(**other).state_dict()}, folder / tiny.HPS_FILE)
    with pytest.raises(ValueError, match="does not match the open_clip model.*shape mismatches.*text_projection"):
        get_reward("hpsv2", folder, device="cpu")


def unsafe_pickle(path, state):
    """A training checkpoint as people save them: tensors plus an argparse.Namespace (not weights-only)."""
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-4)}, path)


def test_hps_pickle_that_is_not_weights_only_is_refused(tmp_path):
    folder = tiny.write_hps_folder(tmp_path / "h")
    unsafe_pickle(folder / tiny.HPS_FILE, torch.load(folder / tiny.HPS_FILE, weights_only=True)["state_dict"])
    with pytest.raises(ValueError, match="is a pickle that is not weights-only.*convert it to .safetensors"):
        get_reward("hpsv2", folder, device="cpu")


def test_aesthetic_head_pickle_that_is_not_weights_only_is_refused(tmp_path):
    folder = tiny.write_aesthetic_folder(tmp_path / "a")
    unsafe_pickle(folder / tiny.HEAD_FILE, tiny.aesthetic_head_state())
    with pytest.raises(ValueError, match="is a pickle that is not weights-only"):
        get_reward("aesthetic", folder, device="cpu")


def test_transformers_bin_pickle_that_is_not_weights_only_is_refused(tmp_path):
    from safetensors.torch import load_file

    folder = tiny.write_clip_folder(tmp_path / "c")
    state = load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle that is not weights-only"):
        get_reward("clipscore", folder, device="cpu")
