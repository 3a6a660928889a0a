"""Algorithm 1 calibration of ψ(t) (docs/method.md §8)."""

import pytest
import torch

from densegrpo_core.method.calibrate import CalibrationConfig, calibrate, calibration_step, is_balanced, sign_counts
from densegrpo_core.method.schedule import Psi


def balanced_dR(psi, it, n=24):
    """Half the samples gain, half lose, at every step."""
    sign = torch.tensor([1.0, -1.0]).repeat(n // 2)[:, None]
    return sign * torch.ones(n, psi.numel())


def imbalanced_dR(psi, it, n=24):
    return torch.ones(n, psi.numel())


def test_calibration_raises_psi_on_balanced_steps():
    res = calibrate(balanced_dR, Psi.uniform(0.7, 4), CalibrationConfig(iterations=5, average_last=1))
    assert res.psi.values == pytest.approx([0.75] * 4)


def test_result_with_one_averaged_iteration_is_psi_after_the_last_update():
    """Algorithm 1 returns ψ after its last update (docs/method.md §8): five balanced iterations from 0.7 give 0.75,
    not the 0.74 the fifth iteration sampled with."""
    res = calibrate(balanced_dR, Psi.uniform(0.7, 4), CalibrationConfig(iterations=5, average_last=1))
    assert res.history[-1]["psi"] == pytest.approx([0.74] * 4)
    assert res.psi.values == pytest.approx(res.history[-1]["psi_next"])


def test_calibration_lowers_psi_on_imbalanced_steps():
    res = calibrate(imbalanced_dR, Psi.uniform(0.7, 4), CalibrationConfig(iterations=5, average_last=1))
    assert res.psi.values == pytest.approx([0.65] * 4)


def test_calibration_respects_the_clamp():
    res = calibrate(imbalanced_dR, Psi.uniform(0.1, 3), CalibrationConfig(iterations=20, clamp=(0.05, 1.5)))
    assert min(min(h["psi"]) for h in res.history) == pytest.approx(0.05)
    res = calibrate(balanced_dR, Psi.uniform(1.45, 3), CalibrationConfig(iterations=20))
    assert max(max(h["psi"]) for h in res.history) == pytest.approx(1.5)


def test_calibration_records_history_per_iteration():
    res = calibrate(balanced_dR, Psi.uniform(0.7, 2), CalibrationConfig(iterations=3))
    assert [h["iteration"] for h in res.history] == [0, 1, 2]
    assert res.history[0]["pos"] == [12, 12] and res.history[0]["neg"] == [12, 12]
    assert res.history[1]["psi"] == pytest.approx([0.71, 0.71])
    assert res.history[1]["psi_next"] == pytest.approx([0.72, 0.72])
    assert res.psi.meta["source"] == "calibration"


def test_result_is_average_of_the_last_updated_psis():
    res = calibrate(balanced_dR, Psi.uniform(0.5, 1), CalibrationConfig(iterations=4, average_last=2))
    assert [h["psi_next"] for h in res.history[-2:]] == [pytest.approx([0.53]), pytest.approx([0.54])]
    assert res.psi.values == pytest.approx([(0.53 + 0.54) / 2])


def test_steps_are_updated_independently():
    def mixed(psi, it):
        dR = torch.ones(24, 2)
        dR[::2, 0] = -1.0
        return dR

    res = calibrate(mixed, Psi.uniform(0.7, 2), CalibrationConfig(iterations=1))
    assert res.history[-1]["psi_next"] == pytest.approx([0.71, 0.69])


def test_literal_and_relative_criteria_differ_with_large_n():
    pos, neg = torch.tensor([52]), torch.tensor([48])
    assert not is_balanced(pos, neg, 100, "literal", eps1=2).item()
    assert is_balanced(pos, neg, 100, "relative", delta=0.1).item()


def test_zero_gains_count_as_balanced():
    pos, neg = sign_counts(torch.zeros(24, 3))
    assert is_balanced(pos, neg, 24).all()


def test_update_rule():
    psi = calibration_step(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), eps2=0.01)
    torch.testing.assert_close(psi, torch.tensor([0.51, 0.49]))


def test_unknown_criterion_is_rejected():
    with pytest.raises(ValueError, match="unknown balance criterion"):
        CalibrationConfig(criterion="median")
