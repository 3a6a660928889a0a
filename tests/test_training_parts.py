"""The helpers the Trainer delegates to: distributed, ema, checkpoint, export (one behaviour per test)."""

import pytest
import torch

from densegrpo_core.training import checkpoint, distributed, ema, trainer


def test_one_process_is_rank_zero_of_one():
    assert distributed.rank_and_world() == (0, 1)


def test_gather_with_one_process_returns_the_tensor_itself():
    t = torch.arange(3)
    assert distributed.gather(t, 1, torch.device("cpu")) is t


def test_max_over_ranks_with_one_process_is_the_count():
    assert distributed.max_over_ranks(7, 1, torch.device("cpu")) == 7


def test_no_ema_without_a_decay():
    assert ema.init_ema([torch.zeros(2)], None) is None


def test_ema_update_moves_toward_the_live_weights():
    p = torch.nn.Parameter(torch.ones(2))
    avg = [torch.zeros(2)]
    ema.update_ema(avg, [p], 0.75, step=100)  # past the warm-up: decay 0.75
    assert avg[0].tolist() == [0.25, 0.25]


def test_ema_decay_warms_up_as_flow_grpos():
    assert ema.ema_decay_at(0, 0.9) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema.ema_decay_at(80, 0.9) == 0.9


def test_ema_swap_restores_the_live_weights_after_the_block():
    p = torch.nn.Parameter(torch.ones(2))
    with ema.ema_swapped_in([p], [torch.zeros(2)]):
        assert p.tolist() == [0.0, 0.0]
    assert p.tolist() == [1.0, 1.0]


def test_the_trainer_module_reexports_the_checkpoint_format():
    assert trainer.CHECKPOINT_FORMAT == checkpoint.CHECKPOINT_FORMAT
