"""Flow grids and the ψ(t) type (MATH.md §1-§2)."""
import json

import pytest
import torch

from densegrpo_core.schedule import PSI_FORMAT, Psi, as_psi, sde_noise_scales, shifted_flow_grid, validate_grid


def test_shifted_grid_matches_sd3_formula():
    tau = shifted_flow_grid(4, shift=3.0)
    s = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(tau, (3 * s / (1 + 2 * s)).float())
    assert tau[0] == 1.0 and tau[-1] == 0.0


@pytest.mark.parametrize("grid, msg", [([1.0, 0.5, 0.6, 0.0], "strictly decreasing"),
                                       ([1.0, 0.5, 0.1], "end at 0"),
                                       ([1.5, 0.5, 0.0], "<= 1"),
                                       ([0.0], "at least 2")])
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
        sde_noise_scales(torch.tensor([0.1, 0.2, 0.3]), shifted_flow_grid(4))


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
