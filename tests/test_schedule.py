"""Flow grids and the ψ(t) type (docs/method.md §1-§2)."""

import json

import pytest
import torch

from densegrpo_core.method.schedule import (
    PSI_FORMAT,
    Psi,
    as_psi,
    flow_grid,
    sd3_scheduler_grid,
    sde_noise_scales,
    shifted_linspace_grid,
    validate_grid,
)

# docs/method.md §1: the SD3 scheduler grid for T = 10, shift 3, to its printed precision
SD3_T10_SHIFT3 = [1.0, 0.960, 0.913, 0.858, 0.790, 0.707, 0.602, 0.465, 0.278, 0.0089, 0.0]


def test_sd3_grid_for_ten_steps_matches_math_md():
    tau = sd3_scheduler_grid(10, shift=3.0)
    assert tau.dtype == torch.float32 and tau.shape == (11,)
    assert torch.allclose(tau, torch.tensor(SD3_T10_SHIFT3), atol=6e-4)


def test_sd3_grid_matches_flow_grpo_formula():
    """Flow-GRPO / diffusers: σ = shift(linspace(1, shift(1/1000), T)), then 0 (docs/method.md §1)."""
    shift, T = 3.0, 7
    sh = lambda s: shift * s / (1 + (shift - 1) * s)  # noqa: E731
    s = torch.linspace(1.0, sh(torch.tensor(1e-3, dtype=torch.float64)).item(), T, dtype=torch.float64)
    expected = torch.cat([sh(s), torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(sd3_scheduler_grid(T, shift), expected)


def test_sd3_grid_matches_diffusers_flow_match_euler_scheduler():
    diffusers = pytest.importorskip("diffusers")
    for T, shift in ((10, 3.0), (4, 1.0), (40, 3.0)):
        sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        sched.set_timesteps(T)
        torch.testing.assert_close(sd3_scheduler_grid(T, shift), sched.sigmas.float(), atol=1e-6, rtol=0)


def test_flow_grid_defaults_to_sd3_and_names_the_shifted_linspace_option():
    torch.testing.assert_close(flow_grid(10), sd3_scheduler_grid(10, 3.0))
    torch.testing.assert_close(flow_grid(10, kind="shifted_linspace"), shifted_linspace_grid(10, 3.0))
    assert flow_grid(10, kind="shifted_linspace")[-2].item() == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError, match="unknown grid 'karras'"):
        flow_grid(10, kind="karras")


def test_psi_calibrated_on_one_grid_is_refused_on_another_naming_both():
    psi = Psi([0.7] * 10, tau=shifted_linspace_grid(10).tolist(), meta={"source": "calibration"})
    with pytest.raises(
        ValueError,
        match=r"calibrated on the grid \[1, 0.9643.*used on the training grid "
        r"\[1, 0.9601, .*0.008929",
    ):
        psi.check_grid(sd3_scheduler_grid(10).tolist(), "the training grid")
    assert psi.check_grid(shifted_linspace_grid(10).tolist()) is psi


def test_uniform_psi_and_psi_without_grid_fit_any_grid():
    tau = sd3_scheduler_grid(10).tolist()
    Psi.uniform(0.7, 10, tau=shifted_linspace_grid(10).tolist()).check_grid(tau)
    Psi([0.5] * 10).check_grid(tau)


def test_shifted_grid_matches_sd3_formula():
    tau = shifted_linspace_grid(4, shift=3.0)
    s = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(tau, (3 * s / (1 + 2 * s)).float())
    assert tau[0] == 1.0 and tau[-1] == 0.0


@pytest.mark.parametrize(
    "grid, msg",
    [
        ([1.0, 0.5, 0.6, 0.0], "strictly decreasing"),
        ([1.0, 0.5, 0.1], "end at 0"),
        ([1.5, 0.5, 0.0], "<= 1"),
        ([0.0], "at least 2"),
    ],
)
def test_bad_grids_are_rejected(grid, msg):
    with pytest.raises(ValueError, match=msg):
        validate_grid(torch.tensor(grid))


def test_psi_json_round_trip(tmp_path):
    psi = Psi([0.7, 0.6, 0.5], tau=[1.0, 0.6, 0.3, 0.0], meta={"source": "calibration", "n": 24})
    psi.save(tmp_path / "psi.json")
    raw = json.loads((tmp_path / "psi.json").read_text())
    assert raw["format"] == PSI_FORMAT and raw["psi"] == [0.7, 0.6, 0.5] and len(raw["tau"]) == 4
    back = Psi.load(tmp_path / "psi.json")
    assert back.values == psi.values and back.tau == psi.tau and back.meta == psi.meta


def test_flow_grpo_uniform_psi():
    assert Psi.uniform(0.7, 5).values == [0.7] * 5


def test_psi_length_must_match_steps():
    with pytest.raises(ValueError, match="psi has 3 values but the sampling grid has 10 steps"):
        Psi([0.1, 0.2, 0.3]).tensor(10)
    with pytest.raises(ValueError, match="psi has 3 entries but the grid has 4 steps"):
        sde_noise_scales(torch.tensor([0.1, 0.2, 0.3]), shifted_linspace_grid(4))


def test_negative_psi_is_rejected():
    with pytest.raises(ValueError, match="psi values must be finite and >= 0.*steps \\[1\\]"):
        Psi([0.5, -0.1])


def test_psi_file_of_wrong_format_is_rejected(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "other", "psi": [1]}))
    with pytest.raises(ValueError, match="not a psi file"):
        Psi.load(tmp_path / "x.json")


def test_psi_from_comma_list_and_number():
    assert Psi.parse("0.7, 0.5,0.3").values == [0.7, 0.5, 0.3]
    assert as_psi(0.4, 3).values == [0.4] * 3
    with pytest.raises(ValueError, match="comma-separated"):
        Psi.parse("0.7, abc")
