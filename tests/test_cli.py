"""The command line: outputs, exit codes and one-line errors."""

import json
import subprocess
import sys

import pytest
from PIL import Image


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "densegrpo_core", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_every_command_has_help():
    for cmd in ("demo", "sample", "calibrate", "visualize", "train", "bench", "time-to-reward"):
        r = cli(cmd, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, cmd


def test_sample_writes_png(tmp_path):
    out = tmp_path / "x.png"
    r = cli("sample", "--prompt", "a red circle on a white background", "--num", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size[0] > 16 and "reward" in r.stdout


def test_calibrate_writes_psi_json_and_plot(tmp_path):
    r = cli(
        "calibrate", "--out", str(tmp_path), "--iterations", "2", "--steps", "4", "--prompts", "2", "--group-size", "3"
    )
    assert r.returncode == 0, r.stderr
    psi = json.loads((tmp_path / "psi.json").read_text())
    assert psi["format"] == "densegrpo.psi/1" and len(psi["psi"]) == 4 and len(psi["history"]) == 2
    assert Image.open(tmp_path / "psi.png").size[0] > 100


def test_calibrated_psi_records_the_sd3_scheduler_grid_by_default(tmp_path):
    """T = 10, shift 3 (the toy's): psi.json's tau is Flow-GRPO's SD3 scheduler grid (docs/method.md §1)."""
    r = cli("calibrate", "--out", str(tmp_path), "--iterations", "1", "--prompts", "1", "--group-size", "2")
    assert r.returncode == 0, r.stderr
    tau = json.loads((tmp_path / "psi.json").read_text())["tau"]
    expected = [1.0, 0.960, 0.913, 0.858, 0.790, 0.707, 0.602, 0.465, 0.278, 0.0089, 0.0]
    assert tau == pytest.approx(expected, abs=1e-3)


def test_a_psi_file_from_another_grid_is_refused_by_the_cli(tmp_path):
    r = cli(
        "calibrate",
        "--out",
        str(tmp_path),
        "--iterations",
        "1",
        "--prompts",
        "1",
        "--group-size",
        "2",
        "--steps",
        "4",
        "--grid",
        "shifted_linspace",
    )
    assert r.returncode == 0, r.stderr
    r = cli(
        "visualize",
        "--out",
        str(tmp_path / "v"),
        "--steps",
        "4",
        "--group-size",
        "2",
        "--psi",
        str(tmp_path / "psi.json"),
    )
    assert r.returncode == 2 and "calibrated on the grid" in r.stderr and "used on the sampling grid" in r.stderr


def test_visualize_writes_plot_and_numbers(tmp_path):
    r = cli("visualize", "--out", str(tmp_path), "--steps", "4", "--group-size", "3")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "dense_rewards.json").read_text())
    assert len(data["R"]) == 3 and len(data["R"][0]) == 5 and data["nfe_per_trajectory"] == 10
    assert (tmp_path / "dense_rewards.png").is_file() and (tmp_path / "ode_endpoints.png").is_file()


@pytest.mark.parametrize(
    "args, msg",
    [
        (["sample", "--prompt", "a red circle", "--psi", "0.5,0.5", "--steps", "4"], "psi has 2 values"),
        (["sample", "--prompt", "a red circle", "--psi", "-0.5"], "psi values must be finite and >= 0"),
        (["sample", "--prompt", "a purple elephant", "--out", "/dev/null"], "elephant"),
        (["train", "--config", "does_not_exist.toml"], "config file not found"),
        (["visualize", "--reward", "no_such_module:fn"], "cannot import reward module"),
    ],
)
def test_bad_inputs_exit_2_with_reason(args, msg, tmp_path):
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_from_toml_with_custom_reward(tmp_path):
    (tmp_path / "my_reward.py").write_text(
        "import torch\ndef brightness(images, prompts):\n    return images.mean(dim=(1, 2, 3))\n"
    )
    (tmp_path / "cfg.toml").write_text(
        "steps = 3\niterations = 1\nprompts_per_iteration = 2\ngroup_size = 2\nlora_rank = 2\n"
        "lora_alpha = 4\neval_every = 0\neval_seeds = [0]\neval_steps = 3\n"
    )
    r = cli(
        "train",
        "--config",
        "cfg.toml",
        "--out",
        "run",
        "--reward",
        "my_reward:brightness",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 1 and (tmp_path / "run" / "lora.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()


def test_shipped_train_configs_are_valid():
    from pathlib import Path

    from densegrpo_core.app.cli import _load_toml
    from densegrpo_core.models.spec import ModelSpec
    from densegrpo_core.training.trainer import TrainConfig

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        raw = _load_toml(str(path))
        ModelSpec.pop_from(raw)  # model and data keys (a diffusers folder need not exist here)
        TrainConfig.from_dict(raw)


def test_train_takes_the_window_from_the_toml_and_the_command_line(tmp_path):
    (tmp_path / "cfg.toml").write_text(
        "steps = 4\niterations = 1\nprompts_per_iteration = 2\ngroup_size = 2\nlora_rank = 2\nlora_alpha = 4\n"
        'eval_every = 0\neval_seeds = [0]\neval_steps = 3\nsde_window_schedule = "sliding"\nsde_window_range = [1, 4]\n'
    )
    r = cli("train", "--config", "cfg.toml", "--out", "run", "--sde-window", "2", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (m["sde_window_start"], m["sde_window_end"]) == (1, 3)  # sliding: the range's first position
