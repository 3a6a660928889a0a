import pytest
import torch
from PIL import Image

from densegrpo_core.util.plots import plot_dense_rewards, plot_psi_history, plot_reward_curves

T, B = 10, 6


@pytest.fixture
def latent_rewards():
    g = torch.Generator().manual_seed(0)
    return torch.linspace(0.2, 0.8, T + 1)[None] + 0.05 * torch.randn(B, T + 1, generator=g)  # (B, T+1)


@pytest.fixture
def psi_history():
    return [
        {
            "iteration": i,
            "psi": [0.7 + 0.01 * i * (k % 3 - 1) for k in range(T)],
            "pos": [3 + (k + i) % 2 for k in range(T)],
            "neg": [3 - (k + i) % 2 for k in range(T)],
            "n": B,
        }
        for i in range(5)
    ]


@pytest.fixture
def curves():
    return {
        "dense_grpo": {"iterations": [0, 5, 10], "reward_mean": [[0.5, 0.6, 0.7], [0.52, 0.63, 0.69]]},
        "flow_grpo": {"iterations": [0, 5, 10], "reward_mean": [0.5, 0.55, 0.6]},
    }


def _assert_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_plot_dense_rewards_writes_a_png(tmp_path, latent_rewards):
    path = tmp_path / "dense.png"
    assert plot_dense_rewards(latent_rewards, path, tau=torch.linspace(1, 0, T + 1).tolist()) == str(path)
    _assert_png(path)


def test_plot_dense_rewards_without_a_path_returns_an_rgb_image(latent_rewards):
    image = plot_dense_rewards(latent_rewards.numpy(), max_trajectories=4)
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.width > 100


def test_plot_dense_rewards_rejects_a_one_dimensional_input():
    with pytest.raises(ValueError, match="R"):
        plot_dense_rewards(torch.zeros(T + 1))


def test_plot_psi_history_writes_a_png(tmp_path, psi_history):
    path = tmp_path / "psi.png"
    assert plot_psi_history(psi_history, path) == str(path)
    _assert_png(path)


def test_plot_psi_history_without_a_path_returns_an_image(psi_history):
    assert isinstance(plot_psi_history(psi_history), Image.Image)


def test_plot_reward_curves_writes_a_png_with_seeds_flat_lists_and_references(tmp_path, curves):
    path = tmp_path / "curves.png"
    assert plot_reward_curves(curves, path, reference={"pretrained": 0.5}) == str(path)
    _assert_png(path)


def test_plot_reward_curves_without_a_path_returns_an_image(curves):
    assert isinstance(plot_reward_curves(curves, title="toy"), Image.Image)


def test_plot_reward_curves_rejects_a_seed_of_the_wrong_length(curves):
    curves["flow_grpo"]["reward_mean"] = [[0.5, 0.6]]
    with pytest.raises(ValueError, match="flow_grpo"):
        plot_reward_curves(curves)
