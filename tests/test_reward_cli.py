"""The CLI and the trainer take rewards by name with a path (--reward-path / reward_path), as weighted sums, and
as module:function callables."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tiny_reward_models as tiny
from safetensors import safe_open

from densegrpo_core.app import cli
from densegrpo_core.training.trainer import TrainConfig

TESTS = Path(__file__).parent
PROMPT = "a red circle on a white background"
TINY_TRAIN = (
    "steps = 2\niterations = 1\nprompts_per_iteration = 2\ngroup_size = 2\nlora_rank = 2\n"
    "lora_alpha = 4\neval_every = 0\neval_seeds = [0]\neval_steps = 2\n"
)


@pytest.fixture(scope="module")
def aesthetic_dir(tmp_path_factory):
    return tiny.write_aesthetic_folder(tmp_path_factory.mktemp("reward_models") / "aesthetic")


@pytest.fixture
def no_signal_handlers(monkeypatch):
    """cli.main in-process must not take over pytest's SIGINT handler."""
    monkeypatch.setattr(cli, "_stop_flag", threading.Event)


def test_sample_command_scores_with_a_reward_given_by_name_and_path(aesthetic_dir, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "densegrpo_core",
            "sample",
            "--prompt",
            PROMPT,
            "--num",
            "2",
            "--steps",
            "2",
            "--reward",
            "aesthetic",
            "--reward-path",
            str(aesthetic_dir),
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"{PROMPT!r}: reward" in r.stdout and (tmp_path / "x.png").is_file()


def test_train_takes_a_weighted_reward_and_its_paths_from_the_config(aesthetic_dir, tmp_path, no_signal_handlers):
    (tmp_path / "cfg.toml").write_text(
        TINY_TRAIN + '[reward]\naesthetic = 1.0\n"test_reward_cli:darkness" = 0.5\n'
        f'[reward_path]\naesthetic = "{aesthetic_dir.as_posix()}"\n'
    )
    assert (
        cli.main(["train", "--config", str(tmp_path / "cfg.toml"), "--out", str(tmp_path / "run"), "--no-progress"])
        == 0
    )
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["reward"] == {"aesthetic": 1.0, "test_reward_cli:darkness": 0.5}
    assert saved["reward_path"] == {"aesthetic": aesthetic_dir.as_posix()}
    with safe_open(str(tmp_path / "run" / "lora.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["reward"]) == saved["reward"]


def test_train_reward_and_reward_path_options_override_the_config(aesthetic_dir, tmp_path, no_signal_handlers, capsys):
    (tmp_path / "cfg.toml").write_text(TINY_TRAIN + 'reward = "toy"\n')
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(tmp_path / "cfg.toml"),
                "--out",
                str(tmp_path / "run"),
                "--reward",
                "aesthetic",
                "--reward-path",
                str(aesthetic_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert (saved["reward"], saved["reward_path"]) == ("aesthetic", str(aesthetic_dir))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["iterations"] == 1


def test_reward_path_option_splits_name_equals_path_for_weighted_rewards(aesthetic_dir):
    args = cli.build_parser().parse_args(
        ["sample", "--prompt", PROMPT, "--reward", "aesthetic=1,toy=1", "--reward-path", f"aesthetic={aesthetic_dir}"]
    )
    assert args.reward_path == {"aesthetic": str(aesthetic_dir)}
    reward = cli._reward(args.reward, args.reward_path, "cpu")
    assert set(reward.weights) == {"aesthetic", "toy"}


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--reward", "pickscore"], "reward 'pickscore' needs its model files"),
        (["--reward", "hpsv2", "--reward-path", "/no/such/folder"], "/no/such/folder does not exist"),
        (["--reward", "toy", "--reward-path", "/tmp"], "reward 'toy' takes no model files"),
    ],
)
def test_bad_reward_files_exit_2_with_a_one_line_reason(extra, msg, capsys, tmp_path):
    assert (
        cli.main(["sample", "--prompt", PROMPT, "--num", "1", "--steps", "1", "--out", str(tmp_path / "x.png"), *extra])
        == 2
    )
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_train_config_with_dict_reward_serialises_and_hashes_without_the_path():
    a = TrainConfig(reward={"pickscore": 1.0, "aesthetic": 0.5}, reward_path={"pickscore": "/a", "aesthetic": "/b"})
    b = TrainConfig(reward={"pickscore": 1.0, "aesthetic": 0.5}, reward_path={"pickscore": "/c", "aesthetic": "/d"})
    assert json.loads(json.dumps(a.to_dict()))["reward_path"] == {"pickscore": "/a", "aesthetic": "/b"}
    assert a.hash() == b.hash() != TrainConfig(reward={"pickscore": 1.0}).hash()
    assert TrainConfig.from_dict(a.to_dict()) == a


def darkness(images, prompts):
    """A custom reward term for the weighted config test."""
    return 1 - images.mean(dim=(1, 2, 3))
