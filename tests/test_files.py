"""One atomic write for every file the project saves: whole or absent, with ordinary permissions."""

import os
import stat

import pytest
import torch

from densegrpo_core.util.atomic import FILE_MODE, atomic_write, atomic_write_json, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_gets_the_permissions_of_an_ordinary_new_file(tmp_path):
    ordinary = tmp_path / "plain.txt"
    ordinary.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert mode(tmp_path / "atomic.txt") == mode(ordinary) == FILE_MODE


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"v": 1})

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == '{\n "v": 1\n}' and os.listdir(tmp_path) == ["state.json"]


def test_lora_and_psi_files_are_ordinary_files(tmp_path):
    from densegrpo_core.method.schedule import Psi
    from densegrpo_core.models.lora import inject_lora, save_lora

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    inject_lora(model, r"0", rank=2, alpha=2)
    save_lora(tmp_path / "x.safetensors", model, {"base_arch": "test"})
    Psi([0.7, 0.6]).save(tmp_path / "psi.json")
    assert mode(tmp_path / "x.safetensors") == mode(tmp_path / "psi.json") == FILE_MODE
