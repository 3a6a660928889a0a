"""The embedded toy model: task, tokenizer, reward, shipped weights and pretraining."""

import os

import pytest
import torch

from densegrpo_core.method.schedule import shifted_linspace_grid
from densegrpo_core.models.toy import ToyBundle, load_toy, load_toy_model
from densegrpo_core.models.toy.model import VOCAB, ToyDiT, ToyDiTConfig, encode_prompts, null_cond
from densegrpo_core.models.toy.pretrain import PretrainConfig, guided_ode_sample, pretrain, save_weights
from densegrpo_core.models.toy.reward import toy_reward
from densegrpo_core.models.toy.task import (
    SHAPE_COLOURS,
    SHAPES,
    all_prompts,
    decode,
    eval_prompts,
    make_prompt,
    parse_prompt,
    prompt_colours,
    render,
    train_prompts,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny batches: extra threads only add contention when other work shares the CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy() -> ToyBundle:
    return load_toy()


def _sample(toy: ToyBundle, prompts, seed=0):
    noise = torch.randn(len(prompts), *toy.latent_shape, generator=torch.Generator().manual_seed(seed))
    return guided_ode_sample(toy.model, noise, toy.encode(prompts), shifted_linspace_grid(10, toy.shift), toy.cfg_scale)


def test_split_is_disjoint_deterministic_and_covers_every_word():
    train, held_out = train_prompts(), eval_prompts()
    assert train == train_prompts() and held_out == eval_prompts()
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(all_prompts())
    assert 0.1 <= len(held_out) / len(all_prompts()) <= 0.25
    train_words = {w for p in train for w in p.split()}
    assert train_words == set(VOCAB[2:])


def test_parse_prompt_rejects_invalid_prompts_naming_them():
    assert parse_prompt("a red circle on a white background") == ("red", "circle", "white")
    for bad in ["a red circle", "a purple circle on a white background", "a blue square on a blue background"]:
        with pytest.raises(ValueError, match=bad):
            parse_prompt(bad)


def test_render_is_deterministic_and_in_range():
    prompts = all_prompts()[:5]
    a = render(prompts, torch.Generator().manual_seed(3))
    b = render(prompts, torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_encode_unknown_word_raises_naming_it():
    ids = encode_prompts(["a red circle on a white background"])
    assert ids.shape == (1, 8) and ids.dtype == torch.long and (ids[0, 7] == 0)
    with pytest.raises(ValueError, match="'purple'"):
        encode_prompts(["a purple circle on a white background"])
    assert null_cond(3)[:, 0].eq(1).all() and null_cond(3)[:, 1:].eq(0).all()


def test_shipped_weights_load_and_generate_finite_images(toy):
    assert not toy.model.training and all(p.dtype == torch.float32 for p in toy.model.parameters())
    assert toy.meta["format"] == "densegrpo.toy/1" and toy.shift in (1.0, 3.0) and toy.cfg_scale > 1
    assert (
        os.path.getsize(
            os.path.join(
                os.path.dirname(__file__), "..", "densegrpo_core", "models", "toy", "weights", "toy_dit.safetensors"
            )
        )
        < 4e6
    )
    x = _sample(toy, toy.eval_prompts[:4])
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()
    images = toy.decode(x)
    assert images.shape == (4, 16, 16, 3) and images.min() >= 0 and images.max() <= 1


def test_images_depend_on_the_prompt(toy):
    prompts = ["a red circle on a black background", "a cyan square on a white background"]
    noise = torch.randn(1, *toy.latent_shape, generator=torch.Generator().manual_seed(5)).expand(2, -1, -1, -1)
    x = guided_ode_sample(toy.model, noise, toy.encode(prompts), shifted_linspace_grid(10, toy.shift), toy.cfg_scale)
    assert (x[0] - x[1]).abs().mean() > 0.5
    rewards = toy.reward(toy.decode(x), prompts)
    swapped = toy.reward(toy.decode(x.flip(0)), prompts)
    assert (rewards > swapped).all()


def test_pretrained_model_follows_prompts_but_leaves_room(toy):
    prompts = toy.train_prompts[::4]
    sampled = toy.reward(toy.decode(_sample(toy, prompts)), prompts).mean()
    rendered = toy.reward(decode(render(prompts, torch.Generator().manual_seed(0))), prompts).mean()
    assert 0.4 < sampled < rendered - 0.1


def _wrong(prompt, field):
    colour, shape, bg = parse_prompt(prompt)
    if field == "colour":
        colour = next(c for c in SHAPE_COLOURS if c not in (colour, bg))
    else:
        shape = next(s for s in SHAPES if s != shape)
    return make_prompt(colour, shape, bg)


def test_reward_ranks_correct_renders_above_wrong_ones_and_collapses():
    prompts = [
        make_prompt(c, s, b)
        for c, s, b in [
            ("red", "circle", "white"),
            ("green", "square", "black"),
            ("blue", "triangle", "gray"),
            ("yellow", "square", "blue"),
            ("cyan", "circle", "gray"),
            ("magenta", "triangle", "white"),
        ]
    ]
    g = torch.Generator().manual_seed(0)
    correct = toy_reward(decode(render(prompts, g)), prompts)
    assert correct.dtype == torch.float32 and (correct > 0.8).all() and (correct <= 1).all()
    shape_rgb, bg_rgb = prompt_colours(prompts)

    def flat(rgb):
        return rgb.view(-1, 1, 1, 3).expand(-1, 16, 16, 3)

    fixed = decode(render(prompts[:1], g)).expand(len(prompts), -1, -1, -1)
    others = {
        "wrong colour": decode(render([_wrong(p, "colour") for p in prompts], g)),
        "wrong shape": decode(render([_wrong(p, "shape") for p in prompts], g)),
        "flat shape colour": flat(shape_rgb),
        "flat background": flat(bg_rgb),
        "random noise": torch.rand(len(prompts), 16, 16, 3, generator=g),
    }
    for name, images in others.items():
        assert (toy_reward(images, prompts) < correct - 0.1).all(), name
    assert toy_reward(fixed, prompts)[1:].max() < correct.min() - 0.3


def test_reward_is_deterministic_and_continuous():
    prompts = all_prompts()[::7]
    images = decode(render(prompts, torch.Generator().manual_seed(1)))
    r = toy_reward(images, prompts)
    assert torch.equal(r, toy_reward(images, prompts))
    nudged = (images + 0.005 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert (toy_reward(nudged, prompts) - r).abs().max() < 0.02


def test_reward_validates_inputs():
    prompts = ["a red circle on a white background"] * 2
    good = torch.rand(2, 16, 16, 3)
    with pytest.raises(ValueError, match="images must be a \\(B, H, W, 3\\)"):
        toy_reward(good[0], prompts[:1])
    with pytest.raises(ValueError, match="images must be a \\(B, H, W, 3\\)"):
        toy_reward(good.permute(0, 3, 1, 2), prompts)
    with pytest.raises(ValueError, match="images must be finite"):
        toy_reward(torch.full((2, 16, 16, 3), float("nan")), prompts)
    with pytest.raises(ValueError, match="images must lie in \\[0, 1\\]"):
        toy_reward(good * 2 - 1, prompts)
    with pytest.raises(ValueError, match="prompts must be a list of one prompt per image \\(2\\), got 1"):
        toy_reward(good, prompts[:1])
    with pytest.raises(ValueError, match="prompts must be a list"):
        toy_reward(good[:1], prompts[0])
    with pytest.raises(ValueError, match="a red hexagon"):
        toy_reward(good[:1], ["a red hexagon on a white background"])


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="densegrpo_core.models.toy.pretrain"):
        load_toy(path=str(tmp_path / "absent.safetensors"))


def test_pretrain_saves_weights_that_load_and_mismatches_are_rejected(tmp_path):
    cfg = ToyDiTConfig(width=16, depth=1, heads=2, mlp_ratio=1.0, freq_dim=16)
    model, meta = pretrain(PretrainConfig(steps=2, batch_size=4, warmup=1, eval_every=0, eval_seeds=1), cfg)
    path = str(tmp_path / "tiny.safetensors")
    save_weights(model, path, meta)
    assert os.listdir(tmp_path) == ["tiny.safetensors"]
    loaded, loaded_meta = load_toy_model(path)
    assert loaded_meta["steps"] == 2 and loaded_meta["config"]["width"] == 16
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    bigger = ToyDiT(ToyDiTConfig(width=16, depth=2, heads=2, mlp_ratio=1.0, freq_dim=16))
    save_weights(bigger, path, meta)  # the metadata says depth 1: two blocks too many
    with pytest.raises(ValueError, match="unexpected keys \\['blocks.1"):
        load_toy_model(path)
