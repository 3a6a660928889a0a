"""Every bad input of the command line gets exit code 2 (or 1 for a failure during work) and one line that names
the input, the value and what was expected. Each case here is a row of docs/bad_inputs.md, which a test keeps
in step with this list."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from densegrpo_core.app import cli

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "bad_inputs.md"

# a toy run small enough to reach its first reward call in a second
RUN = (
    "steps = 2\niterations = 1\nprompts_per_iteration = 2\ngroup_size = 2\nlora_rank = 2\nlora_alpha = 4\n"
    "eval_seeds = [0]\neval_steps = 2\n"
)
REWARDS = """import torch
def none(images, prompts):
    return None
def three(images, prompts):
    return torch.zeros(3)
def nan(images, prompts):
    return torch.full((len(prompts),), float("nan"))
def text(images, prompts):
    return "high"
def boom(images, prompts):
    return 1 / 0
def stuck(images, prompts):
    import time
    time.sleep(3600)
"""
EVAL_CALL = "(evaluation before training, reward call 1, 12 images)"  # the toy's 12 evaluation prompts × 1 seed
ONE_LINE = "expected one finite score per image, a tensor of shape (12,)"


def bad_toml(name: str, text: str, message: str | None) -> tuple:
    """The case of a train config file holding `text`: exit 2 and "error: `message`"."""
    return name, {"cfg.toml": text + "\n"}, ["train", "--config", "cfg.toml"], 2, message and f"error: {message}"


def bad_run(name: str, files: dict, args: list, code: int, message: str | None) -> tuple:
    """The case of a command line with `files` in its folder; the message as stderr shows it."""
    return name, files, args, code, message


NO_MODEL = (
    "does not exist: expected 'toy' or the path of a diffusers pipeline folder (the folder with model_index.json)"
)
NAN_KEY = "'diffusion_model.blocks.0.attn.qkv.lora_down.weight'"
RUN_WITH = {"cfg.toml": RUN, "bad_reward.py": REWARDS}  # the toy run with the reward module beside it
TRAIN_WITH = ["train", "--config", "cfg.toml", "--reward"]

# (id, files to write, command line, exit code, the exact stderr line; None: see PREFIXES)
CASES = [
    # --- config values: type ---
    bad_toml("group_size-string", 'group_size = "eight"',
             "group_size must be an integer >= 2 (GRPO compares samples of one prompt), got 'eight'"),
    bad_toml("lr-string", 'lr = "x"', "lr must be a number > 0, got 'x'"),
    bad_toml("iterations-float", "iterations = 8.5", "iterations must be an integer >= 1, got 8.5 (float)"),
    bad_toml("iterations-2.5", "iterations = 2.5", "iterations must be an integer >= 1, got 2.5 (float)"),
    bad_toml("iterations-bool", "iterations = true", "iterations must be an integer >= 1, got True"),
    bad_toml("steps-string", 'steps = "10"', "steps must be an integer >= 1, got '10'"),
    bad_toml("grad_checkpointing-string", 'grad_checkpointing = "yes"',
             "grad_checkpointing must be true or false, got 'yes'"),
    bad_toml("adam_betas-one", "adam_betas = [0.9]",
             "adam_betas must be two numbers, each in [0, 1), got [0.9] (list)"),
    bad_toml("eval_seeds-float", "eval_seeds = [0, 1.5]",
             "eval_seeds must be a list of integers, each >= 0, got [0, 1.5] (list)"),
    bad_toml("reward-number", "reward = 3",
             "reward must be a reward name, 'module:function', 'name=weight,…' or a table {name: weight}, got 3 (int)"),
    bad_toml("resolution-string", 'resolution = "512"', "resolution must be a positive integer, got '512'"),
    # --- config values: range ---
    bad_toml("clip_range-0", "clip_range = 0", "clip_range must be > 0 (the PPO clip ε), got 0"),
    bad_toml("beta-negative", "beta = -1", "beta must be >= 0 (the KL weight; 0 = no KL term), got -1"),
    bad_toml("save_every-negative", "save_every = -1", "save_every must be >= 0 (0 = only at the end), got -1"),
    bad_toml("group_size-1", "group_size = 1", "group_size must be >= 2 (GRPO compares samples of one prompt), got 1"),
    bad_toml("iterations-0", "iterations = 0", "iterations must be >= 1, got 0"),
    bad_toml("lr-0", "lr = 0", "lr must be > 0, got 0"),
    bad_toml("lr-nan", "lr = nan", "lr must be a number > 0, got nan (float)"),
    bad_toml("train_fraction-1.5", "train_fraction = 1.5", "train_fraction must be in (0, 1], got 1.5"),
    bad_toml("ema_decay-1", "ema_decay = 1.0", "ema_decay must be in (0, 1), got 1.0"),
    bad_toml("adam_betas-1", "adam_betas = [0.9, 1.0]", "adam_betas must be in [0, 1) each, got (0.9, 1.0)"),
    bad_toml("eval_seeds-empty", "eval_seeds = []",
             "eval_seeds must hold at least one seed (each evaluation prompt is sampled per seed)"),
    bad_toml("reward_timeout_s-negative", "reward_timeout_s = -1",
             "reward_timeout_s must be >= 0 (0 or unset = no limit), got -1"),
    bad_toml("sde_window-11", "sde_window = 11",
             "sde_window must be an integer in [0, steps=10] (0 = no window), got 11"),
    bad_toml("psi-negative", "psi = [0.5, -0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]",
             "psi values must be finite and >= 0; bad entries at steps [1]: [-0.5]"),
    bad_toml("psi-length", "psi = [0.5, 0.5]",
             "psi has 2 values but the sampling grid has 10 steps; calibrate psi for this step count or use a "
             "uniform psi"),
    # --- config values: names and choices ---
    bad_toml("dtype-fp8", 'dtype = "fp8"', "dtype must be one of float32, bfloat16, got 'fp8'"),
    bad_toml("advantage_mode-ppo", 'advantage_mode = "ppo"',
             "unknown advantage mode 'ppo'; expected one of flow_grpo, dense_grpo, dense_baseline, coca"),
    bad_toml("optimizer-sgd", 'optimizer = "sgd"', "optimizer must be one of adamw, adamw8bit, got 'sgd'"),
    bad_toml("grid-karras", 'grid = "karras"',
             "grid must be one of sd3, shifted_linspace or a list of steps+1 flow times, got 'karras'"),
    bad_toml("unknown-key", "learning_rate = 0.001", None),
    bad_toml("reward-weight", 'reward = "toy=heavy"',
             "reward 'toy=heavy': weight of 'toy' must be a number, got 'heavy'"),
    # --- files ---
    bad_run("config-missing", {}, ["train", "--config", "nope.toml"], 2, "error: config file not found: nope.toml"),
    bad_run("config-not-toml", {"cfg.toml": "steps = = 3\n"}, ["train", "--config", "cfg.toml"], 2,
            "error: config file cfg.toml is not valid TOML: Invalid value (at line 1, column 9)"),
    bad_run("model-missing", {}, ["train", "--model", "/no/such/path"], 2, f"error: model '/no/such/path' {NO_MODEL}"),
    bad_toml("model-missing-in-toml", 'model = "/no/such/path"', f"model '/no/such/path' {NO_MODEL}"),
    bad_run("model-missing-sample", {}, ["sample", "--model", "/no/such/path", "--prompt", "a red circle"], 2,
            f"error: model '/no/such/path' {NO_MODEL}"),
    bad_toml("prompts-file-missing", 'train_prompts = "nope.txt"',
             "train_prompts: prompts file 'nope.txt' does not exist"),
    bad_toml("init_lora-missing", RUN + 'init_lora = "nope.safetensors"',
             "LoRA file 'nope.safetensors' does not exist"),
    bad_toml("init_lora-nan", RUN + 'init_lora = "nan.safetensors"',
             f"LoRA file 'nan.safetensors': {NAN_KEY} holds NaN or Inf values; the file is damaged or was saved "
             "from a run that diverged"),
    bad_toml("psi-file-missing", RUN + 'psi = "nope.json"', "psi file not found: nope.json"),
    # --- devices (the messages of a machine without them: DEVICE_MESSAGES) ---
    bad_run("device-cuda", {}, ["train", "--device", "cuda"], 2, None),
    bad_run("device-cuda-7", {}, ["train", "--device", "cuda:7"], 2, None),
    bad_run("device-mps", {}, ["train", "--device", "mps"], 2, None),
    bad_run("device-nonsense", {}, ["train", "--device", "nonsense"], 2,
            "error: device must be cpu, cuda, cuda:N or mps, got 'nonsense'"),
    bad_run("device-sample", {}, ["sample", "--prompt", "a red circle", "--device", "cuda:7"], 2, None),
    # --- rewards ---
    bad_run("reward-unknown", {}, ["train", "--reward", "pickscor"], 2,
            "error: unknown reward 'pickscor'; expected one of pickscore, pickscore_flowgrpo, hpsv2, aesthetic, "
            "clipscore, jpeg_compressibility, jpeg_incompressibility, toy or a 'module:function' callable"),
    bad_run("reward-module-missing", {}, ["train", "--reward", "no_such_module:fn"], 2,
            "error: cannot import reward module 'no_such_module': No module named 'no_such_module'"),
    bad_run("reward-function-missing", {"bad_reward.py": REWARDS}, ["train", "--reward", "bad_reward:nope"], 2,
            "error: reward 'bad_reward:nope': module 'bad_reward' has no callable 'nope'"),
    bad_run("reward-path-missing", {}, ["train", "--reward", "hpsv2", "--reward-path", "/no/such/folder"], 2, None),
    bad_run("reward-returns-none", RUN_WITH, [*TRAIN_WITH, "bad_reward:none"], 2,
            f"error: reward 'bad_reward:none' returned None; {ONE_LINE} {EVAL_CALL}"),
    bad_run("reward-returns-text", RUN_WITH, [*TRAIN_WITH, "bad_reward:text"], 2,
            f"error: reward 'bad_reward:text' returned a str; {ONE_LINE} {EVAL_CALL}"),
    bad_run("reward-wrong-length", RUN_WITH, [*TRAIN_WITH, "bad_reward:three"], 2,
            f"error: reward 'bad_reward:three' returned 3 scores for 12 images; {ONE_LINE} {EVAL_CALL}"),
    bad_run("reward-nan", RUN_WITH, [*TRAIN_WITH, "bad_reward:nan"], 2,
            "error: reward 'bad_reward:nan' returned non-finite scores for 12 of 12 images "
            f"(0: nan, 1: nan, 2: nan, 3: nan …); {ONE_LINE} {EVAL_CALL}"),
    bad_run("reward-raises", RUN_WITH, [*TRAIN_WITH, "bad_reward:boom"], 1,
            "failed: RewardCallError: reward 'bad_reward:boom' raised ZeroDivisionError: division by zero "
            f"{EVAL_CALL}"),
]  # fmt: skip


DEVICE_MESSAGES = {  # what a machine without that device says (the test machine: no CUDA, no MPS)
    "device-cuda": "error: device 'cuda' is not available: no CUDA device is visible; use --device cpu",
    "device-cuda-7": "error: device 'cuda:7' is not available: no CUDA device is visible; use --device cpu",
    "device-mps": "error: device 'mps' is not available on this machine (no Apple MPS); use --device cpu",
    "device-sample": "error: device 'cuda:7' is not available: no CUDA device is visible; use --device cpu",
}
PREFIXES = {
    "unknown-key": "error: unknown config keys ['learning_rate']; valid keys: ['adam_betas',",
    "reward-path-missing": "error: reward 'hpsv2': /no/such/folder does not exist",
}


def write_nan_lora(path: Path) -> None:
    from densegrpo_core.models.lora import inject_lora, lora_parameters, save_lora
    from densegrpo_core.models.pipeline import load_pipeline

    pipe, _, _ = load_pipeline("toy")
    inject_lora(pipe.model, "toy", rank=2, alpha=4)
    with torch.no_grad():
        for p in lora_parameters(pipe.model):
            p.fill_(float("nan"))
    save_lora(path, pipe.model)


def run_main(args, tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "_stop_flag", threading.Event)  # no signal handlers in the test process
    try:
        code = cli.main([*args, "--no-progress"] if args[0] == "train" else args)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_clear_line_and_an_exit_code(case, tmp_path, monkeypatch, capsys):
    name, files, args, expected_code, message = case
    if torch.cuda.is_available() and name.startswith("device-") and name != "device-nonsense":
        pytest.skip("this machine has CUDA")
    for file, text in files.items():
        (tmp_path / file).write_text(text)
    if name == "init_lora-nan":
        write_nan_lora(tmp_path / "nan.safetensors")
    code, err = run_main(args, tmp_path, monkeypatch, capsys)
    assert code == expected_code, err
    assert len(err.splitlines()) == 1, err
    if name in PREFIXES:
        assert err.startswith(PREFIXES[name]), err
    else:
        assert err == DEVICE_MESSAGES.get(name, message)


def test_argparse_refuses_a_float_iteration_count_on_the_command_line(tmp_path, monkeypatch, capsys):
    code, err = run_main(["train", "--iterations", "2.5"], tmp_path, monkeypatch, capsys)
    assert code == 2 and err.endswith("argument --iterations: invalid int value: '2.5'")


def test_a_blocking_reward_ends_the_run_in_bounded_time_naming_the_reward(tmp_path):
    (tmp_path / "cfg.toml").write_text(RUN + "reward_timeout_s = 2\n")
    (tmp_path / "bad_reward.py").write_text(REWARDS)
    start = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "densegrpo_core",
            "train",
            "--config",
            "cfg.toml",
            "--reward",
            "bad_reward:stuck",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
    )
    assert time.monotonic() - start < 60
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (
        "failed: RewardTimeoutError: reward 'bad_reward:stuck' did not return within reward_timeout_s = 2 s "
        f"{EVAL_CALL}; the run stops here and can resume from its last checkpoint (the stuck call is left running "
        "in a background thread)"
    )


def _doc_rows() -> dict[str, str]:
    """Case id → its table row in docs/bad_inputs.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if m := re.search(r"`([\w.-]+)`\s*\|\s*$", line):
            rows[m.group(1)] = line
    return rows


def test_the_docs_table_has_a_row_for_every_case_with_its_exit_code_and_message():
    rows = _doc_rows()
    for name, _, _, code, message in CASES:
        assert name in rows, f"docs/bad_inputs.md has no row for {name}"
        row = rows[name]
        shown = PREFIXES.get(name) or DEVICE_MESSAGES.get(name) or message
        assert f"| {code} |" in row, row
        assert shown.removeprefix("error: ").replace("|", "\\|")[:60] in row, (name, row)


def test_a_config_read_back_from_json_is_the_same_config():
    from densegrpo_core.training.config import TrainConfig

    config = TrainConfig(sde_window=1, sde_window_range=(0, 2), grid=[1.0, 0.5, 0.0], steps=2, psi=[0.5, 0.4])
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # lists back to tuples


def test_numpy_integers_count_as_integers():
    from densegrpo_core.training.config import TrainConfig

    config = TrainConfig(group_size=np.int64(4), eval_seeds=[np.int32(0)])
    assert type(config.group_size) is int and type(config.eval_seeds[0]) is int


def test_the_train_nodes_label_of_nested_combined_rewards_is_a_valid_reward_setting():
    from densegrpo_core.training.config import TrainConfig

    label = "pickscore=1,aesthetic=0.5=1,jpeg_compressibility=2"  # WeightedReward of a WeightedReward
    assert TrainConfig(reward=label).reward == label
