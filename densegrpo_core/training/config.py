"""The trainer's configuration: every hyperparameter in one dataclass, and the batch arithmetic it implies.

Derived sizes (CleanRL style) are properties computed once from the fields: `batch_size` = prompts × G
trajectories per iteration (all ranks), `trained_step_count` = ⌊train_fraction · T⌋ (docs/method.md §3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass

import torch

from ..method.advantages import ADVANTAGE_MODE_RECORDS, ADVANTAGE_MODES
from ..method.schedule import GRIDS, as_psi, validate_grid
from ..method.window import WINDOW_SCHEDULES, default_window_range, random_window_start, sliding_window_start
from ..models.lora import LORA_INITS
from ..util.fields import ConfigError, Rule, check_fields
from .optimizer import OPTIMIZERS
from .tensorboard_log import LOGGERS

__all__ = ["FIELD_RULES", "ConfigError", "TrainConfig", "check_device_available", "check_resumable", "trained_steps"]

COUNT, COUNT_OR_ZERO = Rule(">= 1"), Rule(">= 0")
# What each field accepts beyond the type its annotation names (util/fields.py checks both, in field order);
# the cross-field checks (window vs steps, grid vs steps, ψ vs steps) follow in TrainConfig.__post_init__.
FIELD_RULES: dict[str, Rule] = {
    "seed": COUNT_OR_ZERO,
    "dist_timeout_s": Rule("> 0", note="seconds"),
    "device": Rule("non-empty", note="cpu, cuda, cuda:N or mps"),
    "dtype": Rule(choices=("float32", "bfloat16")),
    "iterations": COUNT,
    "steps": COUNT,
    "shift": Rule("> 0"),
    "scheduler": Rule("non-empty"),
    "cfg_scale": Rule(">= 0"),
    "psi": Rule(what="a number >= 0, a list of one number >= 0 per step, or a psi.json path"),
    "ode_steps": COUNT,
    "sde_window": Rule(what="an integer in [0, steps] (0 = no window)"),
    "sde_window_range": Rule(what="two integers [lo, hi) or unset"),
    "sde_window_schedule": Rule(choices=tuple(WINDOW_SCHEDULES)),
    "sde_window_stride": COUNT,
    "sde_window_every": COUNT,
    "max_batch": COUNT,
    "reward_batch": COUNT,
    "prompts_per_iteration": COUNT,
    "group_size": Rule(">= 2", note="GRPO compares samples of one prompt"),
    "global_std": Rule(what="true, false or unset (the mode's own)"),
    "adv_clip": Rule("> 0"),
    "clip_range": Rule("> 0", note="the PPO clip ε"),
    "beta": Rule(">= 0", note="the KL weight; 0 = no KL term"),
    "train_fraction": Rule("in (0, 1]"),
    "lr": Rule("> 0"),
    "adam_betas": Rule("in [0, 1)"),
    "weight_decay": Rule(">= 0"),
    "train_batch": COUNT,
    "grad_accum": COUNT,
    "inner_epochs": COUNT,
    "grad_clip": Rule("> 0"),
    "ema_decay": Rule("in (0, 1)"),
    "ema_every": COUNT,
    "lora_rank": COUNT,
    "lora_alpha": Rule("> 0"),
    "lora_targets": Rule("non-empty"),
    "lora_init": Rule(choices=tuple(LORA_INITS)),
    "init_lora": Rule("non-empty"),
    "reward": Rule("non-empty", what="a reward name, 'module:function', 'name=weight,…' or a table {name: weight}"),
    "reward_path": Rule(what="a file or folder path, a table {name: path} or unset"),
    "reward_timeout_s": Rule(">= 0", note="0 or unset = no limit"),
    "eval_every": Rule(">= 0", note="0 = only at the end"),
    "eval_steps": COUNT,
    "eval_seeds": COUNT_OR_ZERO,
    "save_every": Rule(">= 0", note="0 = only at the end"),
    "eval_rewards": Rule(what="reward names"),
    "eval_reward_path": Rule(what="a table {name: path} or unset"),
    "logger": Rule(choices=tuple(LOGGERS)),
    "optimizer": Rule(choices=tuple(OPTIMIZERS)),
    "rollout_memory_gb": Rule("> 0"),
}


@dataclass
class TrainConfig:
    # --- run ---
    out_dir: str = "out/train"  # metrics, LoRA exports and checkpoints go here
    seed: int = 0  # seeds LoRA init, prompt draws, initial noise and SDE noise
    device: str = "cpu"  # "cpu" or "cuda" (or "cuda:N")
    dtype: str = "float32"  # model compute: "float32" or "bfloat16" (autocast); log-probs stay fp32
    iterations: int = 100  # GRPO iterations (rollout + update)
    dist_timeout_s: float = 600.0  # under torchrun: the longest any collective waits for the other ranks; a frozen
    # or hung rank ends the run after this many seconds with a message naming it (docs/robustness.md)
    # --- sampling (docs/method.md §1-§3) ---
    steps: int = 10  # T, sampling steps of the rollout (paper: 10)
    shift: float | None = None  # grid shift; None = the model's default (SD3: 3)
    grid: str | list[float] = "sd3"  # "sd3": diffusers' SD3 scheduler, as Flow-GRPO samples (= ComfyUI's
    # `normal`); "shifted_linspace": shift(linspace(1, 0, T+1)); or the T+1
    # flow times themselves (e.g. ComfyUI's sigmas of the user's scheduler)
    scheduler: str | None = None  # name of the host scheduler an explicit grid came from (LoRA metadata)
    cfg_scale: float | None = None  # CFG scale for rollouts and training; None = the model's default
    uncond_grad: bool = True  # backpropagate through both CFG passes, as Flow-GRPO's final compute_log_prob;
    # False detaches the unconditional pass (no autograd on it: less memory, a different gradient; §7)
    psi: float | list[float] | str = 0.7  # ψ(t): uniform value, list of T values, or a psi.json path
    ode_steps: int | None = None  # n of ODE_n for latent rewards; None = n = t (fused sweep)
    sde_window: int = 0  # W, SDE steps per rollout (docs/method.md §10); 0 = every step is SDE (no window). The
    # other steps are ODE and untrained; dense modes complete only the latents their advantages read
    sde_window_range: tuple[int, int] | None = None  # grid-index range [lo, hi) the window stays in; None =
    # Flow-GRPO-Fast's (0, T//2) for "random", MixGRPO's (0, T-1) for "sliding" (widened to W if smaller)
    sde_window_schedule: str = "random"  # "random": Flow-GRPO-Fast, start uniform in [lo, hi-W] each iteration,
    # seeded by (seed, iteration), the same on every rank; "sliding": MixGRPO's progressive window
    sde_window_stride: int = 1  # "sliding": grid steps the window moves each time (MixGRPO prog_overlap_step 1)
    sde_window_every: int = 25  # "sliding": iterations between moves (MixGRPO iters_per_group 25)
    max_batch: int = 256  # most rows per forward call in rollouts (memory budget)
    reward_batch: int = 64  # most images per reward call
    # --- GRPO (docs/method.md §6-§7) ---
    advantage_mode: str = "dense_grpo"  # flow_grpo | dense_grpo | dense_baseline | coca
    prompts_per_iteration: int = 4  # distinct prompts per iteration (all ranks together)
    group_size: int = 8  # G samples per prompt (paper: 24; scaled down for the toy)
    global_std: bool | None = None  # normalise by the batch std (True) or the group std (False); None = the
    # mode's own: flow_grpo the batch's (Flow-GRPO's configs), dense modes the group's (Eq. 10) (§6)
    adv_clip: float = 5.0  # A_max
    clip_range: float = 1e-4  # PPO ε
    beta: float = 0.01  # KL weight β (0.04 for compositional/text rewards)
    train_fraction: float = 0.99  # train the first ⌊fraction·T⌋ steps; the last step stays untrained
    # --- optimisation ---
    lr: float = 3e-4  # AdamW learning rate
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW β1, β2
    weight_decay: float = 1e-4  # AdamW weight decay
    train_batch: int = 8  # trajectories per minibatch; one optimizer step per minibatch
    grad_accum: int = 1  # minibatches accumulated per optimizer step
    inner_epochs: int = 1  # passes over one iteration's samples
    grad_clip: float = 1.0  # max global grad norm of the LoRA parameters
    ema_decay: float | None = None  # EMA of LoRA weights for eval/export (Flow-GRPO: 0.9); None = off
    ema_every: int = 8  # EMA update every N optimizer steps, warm-up decay min((1+s)/(10+s), ema_decay) as
    # Flow-GRPO's EMAModuleWrapper (update_step_interval 8) (docs/method.md §7)
    # --- LoRA ---
    lora_rank: int = 32  # r
    lora_alpha: float = 64.0  # α (scale α/r)
    lora_targets: str = "auto"  # preset name (toy | mmdit | flux | …, lora.TARGET_PRESETS) or a module-name regex
    lora_init: str = "gaussian"  # lora_down init: "gaussian" N(0, std 1/r) as Flow-GRPO's peft config, or "kaiming"
    # (peft's default, kaiming-uniform); lora_up starts at zero either way
    init_lora: str | None = None  # start from this LoRA file (same rank/targets) instead of zero
    # --- reward, evaluation, saving ---
    reward: str | dict = "toy"  # reward name, "module:function", or weighted {name: weight} / "a=1,b=0.5"
    reward_path: str | dict | None = None  # file/folder of the reward model (or {name: path} for weighted sums)
    reward_timeout_s: float | None = 600.0  # seconds one reward call may take before the iteration fails with a
    # message naming the reward (the run stays resumable from its last checkpoint); 0 or None = no limit
    # (rewards.call_reward: the call runs in a worker thread, a stuck one is abandoned)
    eval_every: int = 10  # evaluate every N iterations (and at the end); 0 = only at the end
    eval_steps: int = 10  # ODE steps for evaluation (paper: 40)
    eval_seeds: tuple[int, ...] = (0, 1)  # initial-noise seeds per evaluation prompt
    save_every: int = 10  # checkpoint + LoRA export every N iterations (and on stop/end)
    eval_rewards: tuple[str, ...] = ()  # held-out rewards that also score every evaluation's images (e.g.
    # ("aesthetic", "clipscore") next to a PickScore training reward), logged per evaluation: reward hacking shows
    eval_reward_path: dict | None = None  # {name: file/folder} of eval_rewards that need model files
    logger: str = "none"  # "tensorboard": also out_dir/tensorboard event files (rank 0; metrics.jsonl stays)
    eval_images: bool = False  # save each evaluation's images as out_dir/samples/eval_<iteration>.png
    export_diffusers: bool = False  # also write lora_diffusers.safetensors (diffusers/peft keys, α/r folded)
    # --- memory and speed (docs/benchmarks.md) ---
    grad_checkpointing: bool = False  # recompute block activations in the backward pass: much less update memory,
    # one more forward per trained step; same loss and gradients
    offload_reward: bool = False  # park the decoder (VAE) and reward model on the CPU during rollout and update
    optimizer: str = "adamw"  # "adamw" (torch) or "adamw8bit" (optional bitsandbytes: 8-bit moments)
    rollout_memory_gb: float | None = None  # cap rows per no-grad forward so their activations fit this many GiB
    # (estimate.py); None = max_batch alone sets the chunk size

    def __post_init__(self):
        if isinstance(self.eval_rewards, str):  # "aesthetic,clipscore", as the command line gives them
            self.eval_rewards = tuple(r for r in self.eval_rewards.split(",") if r)
        check_fields(self, FIELD_RULES)
        check_device_name(self.device)
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ConfigError(
                f"unknown advantage mode {self.advantage_mode!r}; expected one of {', '.join(ADVANTAGE_MODES)}"
            )
        self._check_window()
        if isinstance(self.grid, str):
            if self.grid not in GRIDS:
                raise ConfigError(
                    f"grid must be one of {', '.join(GRIDS)} or a list of steps+1 flow times, got {self.grid!r}"
                )
        else:
            self.grid = validate_grid(torch.as_tensor(self.grid), "grid").tolist()
            if len(self.grid) != self.steps + 1:
                raise ConfigError(
                    f"grid has {len(self.grid)} flow times but steps = {self.steps} needs {self.steps + 1}"
                )
        if not isinstance(self.psi, str):  # a psi.json path is read (and checked) by the trainer
            as_psi(self.psi, self.steps)
        if not self.eval_seeds:
            raise ConfigError("eval_seeds must hold at least one seed (each evaluation prompt is sampled per seed)")
        if not all(self.eval_rewards):
            raise ConfigError(f"eval_rewards must be reward names, got {self.eval_rewards!r}")
        for key, paths in (("reward_path", self.reward_path), ("eval_reward_path", self.eval_reward_path)):
            bad = {k: v for k, v in paths.items() if not isinstance(v, str) or not v} if isinstance(paths, dict) else {}
            if bad:
                raise ConfigError(f"{key} must map reward names to file or folder paths, got {bad!r}")

    def _check_window(self) -> None:
        """The window's size and range against `steps`, with an error naming the field (docs/method.md §10)."""
        W, T = self.sde_window, self.steps
        if not 0 <= W <= T:
            raise ConfigError(f"sde_window must be an integer in [0, steps={T}] (0 = no window), got {W!r}")
        if self.sde_window_range is not None:
            lo, hi = self.sde_window_range
            if not 0 <= lo < hi <= T:
                raise ConfigError(f"sde_window_range must satisfy 0 <= lo < hi <= steps={T}, got {[lo, hi]}")
            if W and hi - lo < W:
                raise ConfigError(f"sde_window_range {[lo, hi]} is shorter than sde_window = {W}")

    @property
    def std_over_batch(self) -> bool:
        """Whether advantages divide by the batch's std: `global_std`, or the advantage mode's own default."""
        if self.global_std is not None:
            return self.global_std
        return ADVANTAGE_MODE_RECORDS[self.advantage_mode].global_std

    @property
    def window_range(self) -> tuple[int, int]:
        """[lo, hi): the configured sde_window_range, or the schedule's default (docs/method.md §10)."""
        if self.sde_window_range is not None:
            return tuple(self.sde_window_range)
        return default_window_range(self.steps, self.sde_window, self.sde_window_schedule)

    def window_start(self, iteration: int) -> int:
        """Grid index of the window's first step at `iteration` (0-based) (docs/method.md §10)."""
        lo, hi = self.window_range
        if self.sde_window_schedule == "sliding":
            return sliding_window_start(
                lo, hi, self.sde_window, iteration, self.sde_window_stride, self.sde_window_every
            )
        return random_window_start(lo, hi, self.sde_window, self.seed, iteration)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    # --- derived sizes: the batch arithmetic, computed once here (trainer and estimator use these) ---
    @property
    def batch_size(self) -> int:
        """B = prompts_per_iteration · G trajectories per iteration, all ranks together."""
        return self.prompts_per_iteration * self.group_size

    def prompts_per_rank(self, world: int) -> int:
        """Prompts (whole groups) each of `world` processes samples."""
        if self.prompts_per_iteration % world:
            raise ValueError(
                f"prompts_per_iteration ({self.prompts_per_iteration}) must be divisible by the "
                f"number of processes ({world})"
            )
        return self.prompts_per_iteration // world

    @property
    def trained_step_count(self) -> int:
        """⌊train_fraction · T⌋ (at least 1): the first steps get trained, the last one not (docs/method.md §3)."""
        return max(1, math.floor(self.train_fraction * self.steps + 1e-9))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}
        if not self.sde_window:  # inert without a window: runs without one keep the hash they had before
            d = {k: v for k, v in d.items() if not k.startswith("sde_window")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


NOT_HASHED = (
    "out_dir",
    "iterations",
    "device",
    "reward_path",
    "reward_timeout_s",
    "dist_timeout_s",
)  # where and how long, not what
RESUME_KEYS = ("advantage_mode", "steps", "grid", "lora_rank", "group_size", "prompts_per_iteration", "seed")


def check_device_name(device: str) -> None:
    """ConfigError unless torch can parse `device` ("cpu", "cuda", "cuda:1", "mps", …); nothing is initialised."""
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}") from None


def check_device_available(device: str) -> None:
    """ConfigError unless `device` exists on this machine: a CUDA build with that many visible devices for
    cuda / cuda:N, an MPS-capable Mac for mps. For the command line, before any model is loaded."""
    check_device_name(device)
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ConfigError(
                f"device {device!r} is not available: this PyTorch ({torch.__version__}) is built without CUDA; "
                f"use --device cpu"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device {device!r} is not available: no CUDA device is visible; use --device cpu")
        if dev.index is not None and dev.index >= count:
            visible = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(f"device {device!r} does not exist: {count} CUDA device(s) visible ({visible})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine (no Apple MPS); use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ConfigError(f"device {device!r} is not available on this machine; use cpu, cuda or mps")


def check_resumable(config: TrainConfig, checkpoint: str) -> None:
    """ValueError unless the checkpoint folder was written by a run with the same RESUME_KEYS settings."""
    try:
        with open(os.path.join(checkpoint, "config.json")) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint config in {checkpoint!r} (expected config.json)") from None
    for key in RESUME_KEYS:
        if saved.get(key) != getattr(config, key):
            raise ValueError(
                f"cannot resume: checkpoint has {key}={saved.get(key)!r}, config has {getattr(config, key)!r}"
            )


def trained_steps(config: TrainConfig, trainable: torch.Tensor) -> list[int]:
    """Grid indices of trained steps: the first `trained_step_count` that have a density (docs/method.md §3)."""
    return [k for k in range(config.trained_step_count) if bool(trainable[k])]
