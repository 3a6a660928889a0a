"""GRPO training of a LoRA with dense (per-step) rewards: DenseGRPO and its baselines (MATH.md §5-§7).

One iteration, top to bottom (see `Trainer.iteration`):
    prompts → fused rollout (SDE chain + ODE branches, no grad) → decode + reward all T+1 endpoints
    → advantages (mode) → PPO-clip + KL updates over the trained steps, shuffled, adapter-off reference.
Runs on CPU or CUDA, float32 or bf16 autocast (log-probs and rewards stay float32), one process or
several under `torchrun` (whole prompt groups per rank, rewards gathered for statistics, LoRA gradients
all-reduced, rank 0 writes files).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .advantages import ADVANTAGE_MODES, dense_rewards, group_advantages, prompt_groups
from .calibrate import sign_counts
from .memory import OPTIMIZERS, StageMeter, build_optimizer, enable_gradient_checkpointing, offloaded
from .objective import grpo_loss
from .pipeline import FlowPipeline, evaluate, latent_rewards, score_latents
from .rollout import rollout, sde_chain
from .schedule import GRIDS, Psi, as_psi, flow_grid, sde_noise_scales, validate_grid
from .sde import gaussian_log_prob, sde_step_mean, sde_step_std

CHECKPOINT_FORMAT = "densegrpo.checkpoint/1"
DENSE_MODES = ("dense_grpo", "dense_baseline")  # modes that need R_t of every step (ODE branches)


@dataclass
class TrainConfig:
    # --- run ---
    out_dir: str = "out/train"          # metrics, LoRA exports and checkpoints go here
    seed: int = 0                       # seeds LoRA init, prompt draws, initial noise and SDE noise
    device: str = "cpu"                 # "cpu" or "cuda" (or "cuda:N")
    dtype: str = "float32"              # model compute: "float32" or "bfloat16" (autocast); log-probs stay fp32
    iterations: int = 100               # GRPO iterations (rollout + update)
    # --- sampling (MATH.md §1-§3) ---
    steps: int = 10                     # T, sampling steps of the rollout (paper: 10)
    shift: float | None = None          # grid shift; None = the model's default (SD3: 3)
    grid: str | list[float] = "sd3"     # "sd3": diffusers' SD3 scheduler, as Flow-GRPO samples (= ComfyUI's
                                        # `normal`); "shifted_linspace": shift(linspace(1, 0, T+1)); or the T+1
                                        # flow times themselves (e.g. ComfyUI's sigmas of the user's scheduler)
    scheduler: str | None = None        # name of the host scheduler an explicit grid came from (LoRA metadata)
    cfg_scale: float | None = None      # CFG scale for rollouts and training; None = the model's default
    uncond_grad: bool = False           # also backpropagate through CFG's unconditional pass; default detaches
                                        # it and runs it without autograd, as Flow-GRPO (MATH.md §7)
    psi: float | list[float] | str = 0.7  # ψ(t): uniform value, list of T values, or a psi.json path
    ode_steps: int | None = None        # n of ODE_n for latent rewards; None = n = t (fused sweep)
    max_batch: int = 256                # most rows per forward call in rollouts (memory budget)
    reward_batch: int = 64              # most images per reward call
    # --- GRPO (MATH.md §6-§7) ---
    advantage_mode: str = "dense_grpo"  # flow_grpo | dense_grpo | dense_baseline | coca
    prompts_per_iteration: int = 4      # distinct prompts per iteration (all ranks together)
    group_size: int = 8                 # G samples per prompt (paper: 24; scaled down for the toy)
    global_std: bool = False            # normalise by the batch std instead of the group std
    adv_clip: float = 5.0               # A_max
    clip_range: float = 1e-4            # PPO ε
    beta: float = 0.01                  # KL weight β (0.04 for compositional/text rewards)
    train_fraction: float = 0.99        # train the first ⌊fraction·T⌋ steps; the last step stays untrained
    # --- optimisation ---
    lr: float = 3e-4                    # AdamW learning rate
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW β1, β2
    weight_decay: float = 1e-4          # AdamW weight decay
    train_batch: int = 8                # trajectories per minibatch; one optimizer step per minibatch
    grad_accum: int = 1                 # minibatches accumulated per optimizer step
    inner_epochs: int = 1               # passes over one iteration's samples
    grad_clip: float = 1.0              # max global grad norm of the LoRA parameters
    ema_decay: float | None = None      # EMA of LoRA weights for eval/export (e.g. 0.9); None = off
    # --- LoRA ---
    lora_rank: int = 32                 # r
    lora_alpha: float = 64.0            # α (scale α/r)
    lora_targets: str = "auto"          # preset name (toy | mmdit | flux) or a module-name regex
    init_lora: str | None = None        # start from this LoRA file (same rank/targets) instead of zero
    # --- reward, evaluation, saving ---
    reward: str | dict = "toy"          # reward name, "module:function", or weighted {name: weight} / "a=1,b=0.5"
    reward_path: str | dict | None = None  # file/folder of the reward model (or {name: path} for weighted sums)
    eval_every: int = 10                # evaluate every N iterations (and at the end); 0 = only at the end
    eval_steps: int = 10                # ODE steps for evaluation (paper: 40)
    eval_seeds: tuple[int, ...] = (0, 1)  # initial-noise seeds per evaluation prompt
    save_every: int = 10                # checkpoint + LoRA export every N iterations (and on stop/end)
    # --- memory and speed (docs/benchmarks.md) ---
    grad_checkpointing: bool = False    # recompute block activations in the backward pass: much less update memory,
                                        # one more forward per trained step; same loss and gradients
    offload_reward: bool = False        # park the decoder (VAE) and reward model on the CPU during rollout and update
    optimizer: str = "adamw"            # "adamw" (torch) or "adamw8bit" (optional bitsandbytes: 8-bit moments)
    rollout_memory_gb: float | None = None  # cap rows per no-grad forward so their activations fit this many GiB
                                        # (estimate.py); None = max_batch alone sets the chunk size

    def __post_init__(self):
        if self.advantage_mode not in ADVANTAGE_MODES:
            raise ValueError(f"unknown advantage mode {self.advantage_mode!r}; "
                             f"expected one of {', '.join(ADVANTAGE_MODES)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares samples of one prompt), got {self.group_size}")
        for name in ("iterations", "steps", "prompts_per_iteration", "train_batch", "grad_accum",
                     "inner_epochs", "lora_rank", "max_batch", "reward_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.rollout_memory_gb is not None and not self.rollout_memory_gb > 0:
            raise ValueError(f"rollout_memory_gb must be > 0 or None, got {self.rollout_memory_gb}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if isinstance(self.grid, str):
            if self.grid not in GRIDS:
                raise ValueError(f"grid must be one of {', '.join(GRIDS)} or a list of steps+1 flow times, "
                                 f"got {self.grid!r}")
        else:
            self.grid = validate_grid(torch.as_tensor(self.grid), "grid").tolist()
            if len(self.grid) != self.steps + 1:
                raise ValueError(f"grid has {len(self.grid)} flow times but steps = {self.steps} needs "
                                 f"{self.steps + 1}")
        self.adam_betas = tuple(self.adam_betas)
        self.eval_seeds = tuple(self.eval_seeds)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in ("out_dir", "iterations", "device", "reward_path")}
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


RESUME_KEYS = ("advantage_mode", "steps", "grid", "lora_rank", "group_size", "prompts_per_iteration", "seed")


def check_resumable(config: TrainConfig, checkpoint: str) -> None:
    """ValueError unless the checkpoint folder was written by a run with the same RESUME_KEYS settings."""
    try:
        with open(os.path.join(checkpoint, "config.json")) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint config in {checkpoint!r} (expected config.json)") from None
    for key in RESUME_KEYS:
        if saved.get(key) != getattr(config, key):
            raise ValueError(f"cannot resume: checkpoint has {key}={saved.get(key)!r}, "
                             f"config has {getattr(config, key)!r}")


def trained_steps(T: int, fraction: float, trainable: torch.Tensor) -> list[int]:
    """Grid indices of trained steps: the first ⌊fraction·T⌋ (at least 1) that have a density (MATH.md §3)."""
    n = max(1, math.floor(fraction * T + 1e-9))
    return [k for k in range(n) if bool(trainable[k])]


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    metrics: list[dict]                        # one record per iteration
    evals: list[dict]                          # {"iteration", "reward_mean", ...}
    out_dir: str
    lora_path: str | None
    stopped: bool = False
    wall_s: float = 0.0


@dataclass
class Trainer:
    """Owns the LoRA-injected model, optimizer and RNG of one run; `run()` trains, `iteration()` is one step."""

    config: TrainConfig
    pipe: FlowPipeline
    reward: Callable
    train_prompts: Sequence[str]
    eval_prompts: Sequence[str] = ()
    on_event: Callable[[dict], None] | None = None   # receives {"type": ..., ...} events (rank 0 only)
    should_stop: Callable[[], bool] | None = None    # polled between iterations
    metrics: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    def __post_init__(self):
        from . import lora
        cfg = self.config
        if not self.train_prompts:
            raise ValueError("train prompts must not be empty")
        self.rank, self.world = _dist()
        if cfg.prompts_per_iteration % self.world:
            raise ValueError(f"prompts_per_iteration ({cfg.prompts_per_iteration}) must be divisible by the "
                             f"number of processes ({self.world})")
        self.device = torch.device(cfg.device)
        self.autocast_dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        self.shift = self.pipe.default_shift if cfg.shift is None else cfg.shift
        self.cfg_scale = self.pipe.default_cfg if cfg.cfg_scale is None else cfg.cfg_scale
        self.tau = self.grid(cfg.steps)                                            # (T+1,)
        psi = Psi.load(cfg.psi) if isinstance(cfg.psi, str) else as_psi(cfg.psi, cfg.steps)
        self.psi = as_psi(psi, cfg.steps).check_grid(self.tau.tolist(), "the training grid")
        self.prompts = list(dict.fromkeys(self.train_prompts))   # distinct texts: a group is keyed by its text
        if cfg.prompts_per_iteration > len(self.prompts):
            raise ValueError(f"prompts_per_iteration ({cfg.prompts_per_iteration}) exceeds the {len(self.prompts)} "
                             f"distinct training prompts: a batch draws its prompts without replacement")
        self.sigmas = sde_noise_scales(self.psi.tensor(cfg.steps), self.tau)      # (T,)
        self.pipe.model.to(self.device)
        # the LoRA lives in the diffusion network; its module names are the LoRA file's keys
        model = self.pipe.model if self.pipe.lora_module is None else self.pipe.lora_module
        for p in self.pipe.model.parameters():
            p.requires_grad_(False)
        self.targets = cfg.lora_targets if cfg.lora_targets != "auto" else self.pipe.arch
        lora.inject_lora(model, self.targets, rank=cfg.lora_rank, alpha=cfg.lora_alpha, seed=cfg.seed)
        for p in lora.lora_parameters(model):   # float32 master weights on bf16/fp16 base weights (peft copies
            p.data = p.data.float()             # the base dtype); autocast still runs the matmuls in bf16
        if cfg.init_lora:
            lora.load_lora(cfg.init_lora, model)
        self.model = model
        self.params = lora.lora_parameters(model)
        if cfg.grad_checkpointing:
            enable_gradient_checkpointing(model)
        self.optimizer = build_optimizer(cfg.optimizer, self.params, cfg.lr, cfg.adam_betas, cfg.weight_decay)
        self.max_batch = self._rollout_max_batch()
        self.meter = StageMeter(self.device)          # seconds per stage; peak memory on CUDA
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema_decay else None
        self.prompt_gen = torch.Generator().manual_seed(cfg.seed)                 # same on every rank
        self.noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1 + self.rank)
        self.iteration_done = 0
        self.lora_path = None
        self.last_rewards = None                      # R (B_all, T+1) of the last iteration
        if self.rank == 0:
            os.makedirs(cfg.out_dir, exist_ok=True)

    # ----------------------------------------------------------------- helpers
    def grid(self, steps: int) -> torch.Tensor:
        """The flow-time grid of `steps` steps: the configured explicit grid, or the named one (MATH.md §1)."""
        cfg = self.config
        if isinstance(cfg.grid, list) and steps == cfg.steps:
            return torch.tensor(cfg.grid, dtype=torch.float32)
        return flow_grid(steps, self.shift, cfg.grid if isinstance(cfg.grid, str) else "sd3")

    def _emit(self, event: dict) -> None:
        if self.rank == 0 and self.on_event is not None:
            self.on_event(event)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _offload_reward(self):
        """With `offload_reward`, the decoder's and reward model's torch modules sit on the CPU inside the block."""
        return offloaded(self.pipe.decode, self.reward, exclude=(self.pipe.model, self.model),
                         enabled=self.config.offload_reward)

    def _rollout_max_batch(self) -> int:
        """max_batch, lowered so one no-grad forward's activations fit `rollout_memory_gb` (estimate.py)."""
        cfg = self.config
        if cfg.rollout_memory_gb is None:
            return cfg.max_batch
        from .estimate import model_info, rollout_max_batch
        cond = self.pipe.encode([self.train_prompts[0]])
        tokens = [v.shape[1] for v in (cond.values() if isinstance(cond, dict) else [cond])
                  if isinstance(v, torch.Tensor) and v.ndim == 3]
        try:
            info = model_info(self.model, self.pipe.latent_shape, context_tokens=max(tokens, default=0))
        except ValueError as e:
            raise ValueError(f"rollout_memory_gb needs a model the estimator can count ({e}); "
                             f"set max_batch instead") from None
        rows = rollout_max_batch(cfg.rollout_memory_gb * 2**30, info, cfg, kind=self.device.type)
        return min(cfg.max_batch, rows)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        t = t.to(self.device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(out, t)
        return torch.cat(out).cpu()

    def _draw_prompts(self) -> tuple[list[str], torch.Tensor]:
        """This rank's prompts, each repeated G times, and the group ids of the whole batch (B_all,).

        The batch's prompts are drawn without replacement, the same draw on every rank (MATH.md §6); a
        group is keyed by prompt text, so the ids hold across ranks.
        """
        cfg = self.config
        idx = torch.randperm(len(self.prompts), generator=self.prompt_gen)[:cfg.prompts_per_iteration].tolist()
        batch = [self.prompts[i] for i in idx for _ in range(cfg.group_size)]      # (B_all,) rank-major
        B = len(batch) // self.world
        return batch[self.rank * B:(self.rank + 1) * B], prompt_groups(batch)

    # ------------------------------------------------------------- iteration
    def iteration(self) -> dict:
        """One GRPO iteration: rollout, rewards, advantages, PPO updates. Returns its metrics."""
        cfg, T = self.config, self.config.steps
        t0 = time.perf_counter()
        self.meter.reset()
        prompts, groups_all = self._draw_prompts()
        B = len(prompts)
        dense = cfg.advantage_mode in DENSE_MODES
        self.model.eval()
        with self.meter.stage("rollout"), self._offload_reward(), torch.no_grad(), self._autocast():
            x_T = torch.randn((B, *self.pipe.latent_shape), generator=self.noise_gen).to(self.device)
            guide = self.pipe.guide(prompts, self.cfg_scale, self.max_batch, self.device)
            if dense:   # SDE chain + ODE_t(x_t) for every t: T(T+1)/2 NFE per trajectory
                ro = rollout(guide, x_T, self.tau, self.sigmas, self.noise_gen, cfg.ode_steps)
            else:       # sparse modes only observe R_0: the SDE chain alone, T NFE
                ro = sde_chain(guide, x_T, self.tau, self.sigmas, self.noise_gen)

        with self.meter.stage("reward"):
            if dense:
                R_local = latent_rewards(ro, prompts, self.pipe.decode, self.reward, cfg.reward_batch)  # (B, T+1)
            else:   # only R_0 is known; it fills every column so the advantage code sees (B, T+1)
                R0 = score_latents(ro.latents[:, -1].float(), prompts, self.pipe.decode, self.reward, cfg.reward_batch)
                R_local = R0[:, None].expand(B, T + 1).contiguous()

        R = self._gather(R_local)                                                 # (B_all, T+1)
        lat_all = self._gather(ro.latents.float()) if cfg.advantage_mode == "coca" else None
        A_all = group_advantages(R, groups_all, cfg.advantage_mode, latents=lat_all,
                                 global_std=cfg.global_std, clip=cfg.adv_clip)    # (B_all, T)
        A = A_all[self.rank * B:(self.rank + 1) * B]                              # (B, T)

        steps = trained_steps(T, cfg.train_fraction, ro.trainable)
        with self.meter.stage("update"), self._offload_reward():
            update_stats = self.update(ro, prompts, A, steps)

        self.iteration_done += 1
        m = {"iteration": self.iteration_done,
             "reward_mean": R[:, -1].mean().item(), "reward_std": R[:, -1].std(unbiased=False).item()}
        if dense:
            dR = dense_rewards(R)                                                 # (B_all, T)
            pos, neg = sign_counts(dR)
            m.update({"ode_reward_mean": R[:, 0].mean().item(), "dR_mean": dR.mean(0).tolist(),
                      "dR_pos": pos.tolist(), "dR_neg": neg.tolist()})
        m.update({"adv_std": A_all[:, steps].std().item() if steps else 0.0,
                  "nfe": ro.nfe * self.world, "nfe_per_trajectory": ro.nfe_per_trajectory,
                  "trained_steps": steps, **update_stats, **self.meter.last, "iteration_s": time.perf_counter() - t0})
        self.last_rewards = R
        return m

    def update(self, ro, prompts: list[str], A: torch.Tensor, steps: list[int]) -> dict:
        """PPO-clip + KL over the trained steps; one optimizer step per `grad_accum` minibatches (MATH.md §7)."""
        from .lora import adapters_disabled
        cfg = self.config
        B = A.shape[0]
        active = (A[:, steps] != 0).any(dim=1).nonzero().flatten() if steps else A.new_zeros(0, dtype=torch.long)
        stats = {"loss": [], "policy_loss": [], "kl": [], "ratio_mean": [], "clip_frac": []}
        n_opt, grad_norms = 0, []
        if len(active) == 0:
            return {"skipped_samples": B, "optimizer_steps": 0, **{k: 0.0 for k in stats}, "grad_norm": 0.0}
        guide = self.pipe.guide(prompts, self.cfg_scale, self.max_batch, self.device,
                                detach_uncond=not cfg.uncond_grad)
        self.model.train()
        for _ in range(cfg.inner_epochs):
            order = active[torch.randperm(len(active), generator=self.noise_gen)]
            minibatches = list(order.split(cfg.train_batch))
            for mb_i, mb in enumerate(minibatches):
                step_order = [steps[j] for j in torch.randperm(len(steps), generator=self.noise_gen).tolist()]
                rows = mb.to(self.device)
                for k in step_order:
                    tau, tau_next, sigma = self.tau[k].item(), self.tau[k + 1].item(), self.sigmas[k].item()
                    x = ro.latents[mb, k].to(self.device)                        # (b, ...)
                    x_next = ro.latents[mb, k + 1].to(self.device)
                    with self._autocast():
                        v = guide.velocity(x, tau, rows)
                    mean = sde_step_mean(x, v, tau, tau_next, sigma)              # float32, with grad
                    log_prob = gaussian_log_prob(x_next, mean, sde_step_std(tau, tau_next, sigma))
                    with torch.no_grad(), adapters_disabled(self.model), self._autocast():
                        mean_ref = sde_step_mean(x, guide.velocity(x, tau, rows), tau, tau_next, sigma)
                    loss, s = grpo_loss(log_prob, ro.log_probs[mb, k].to(self.device), A[mb, k].to(self.device),
                                        mean, mean_ref, sigma, cfg.clip_range, cfg.beta)
                    (loss / (len(step_order) * cfg.grad_accum)).backward()
                    for key in stats:
                        stats[key].append(s[key])
                if (mb_i + 1) % cfg.grad_accum == 0 or mb_i == len(minibatches) - 1:
                    grad_norms.append(self._optimizer_step())
                    n_opt += 1
        self.model.eval()
        return {"skipped_samples": B - len(active), "optimizer_steps": n_opt,
                "grad_norm": sum(grad_norms) / len(grad_norms),
                **{k: sum(v) / len(v) for k, v in stats.items()}}

    def _optimizer_step(self) -> float:
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p.detach(), 1 - self.config.ema_decay)
        return norm

    # ------------------------------------------------------------ evaluation
    def _swap_ema(self):
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    tmp = p.detach().clone()
                    p.copy_(e)
                    e.copy_(tmp)

    def evaluate(self) -> dict:
        """Mean reward of plain-ODE samples on the evaluation prompts (EMA weights when enabled)."""
        cfg = self.config
        self._swap_ema()
        try:
            res = evaluate(self.pipe, self.reward, self.eval_prompts, seeds=cfg.eval_seeds,
                           tau=self.grid(cfg.eval_steps), cfg_scale=self.cfg_scale, device=self.device,
                           max_batch=self.max_batch, autocast_dtype=self.autocast_dtype)
        finally:
            self._swap_ema()
        return {"iteration": self.iteration_done, "reward_mean": res["reward_mean"],
                "reward_std": res["reward_std"], "n": res["n"]}

    # ------------------------------------------------------- save and resume
    def lora_metadata(self) -> dict:
        cfg = self.config
        return {"base_arch": self.targets, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                "psi": json.dumps(self.psi.values), "reward": cfg.reward, "iteration": self.iteration_done,
                "advantage_mode": cfg.advantage_mode, "config_hash": cfg.hash(),
                "steps": cfg.steps, "shift": self.shift, "cfg_scale": self.cfg_scale,
                "grid": cfg.grid if isinstance(cfg.grid, str) else "explicit",
                **({"scheduler": cfg.scheduler} if cfg.scheduler else {}),
                "sigmas": json.dumps([round(t, 6) for t in self.tau.tolist()]),
                **{f"model_{k}": v for k, v in self.pipe.info.items()}}

    def export_lora(self, path: str) -> str:
        """Write the (EMA, if enabled) LoRA atomically in ComfyUI's key format."""
        from .lora import save_lora
        self._swap_ema()
        try:
            save_lora(path, self.model, self.lora_metadata())
        finally:
            self._swap_ema()
        return path

    def save_checkpoint(self) -> str | None:
        """Atomic checkpoint folder `out_dir/checkpoint`: LoRA, optimizer, RNG, ψ, config, metrics."""
        from .lora import save_lora
        states = [self.noise_gen.get_state()]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, self.noise_gen.get_state())
            states = gathered
        if self.rank != 0:
            return None
        out = self.config.out_dir
        final, tmp = os.path.join(out, "checkpoint"), os.path.join(out, f".checkpoint.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            save_lora(os.path.join(tmp, "lora.safetensors"), self.model, self.lora_metadata())
            torch.save({"format": CHECKPOINT_FORMAT, "iteration": self.iteration_done,
                        "optimizer": self.optimizer.state_dict(), "prompt_gen": self.prompt_gen.get_state(),
                        "noise_gens": states, "ema": self.ema}, os.path.join(tmp, "state.pt"))
            self.psi.save(os.path.join(tmp, "psi.json"))
            _atomic_write_text(os.path.join(tmp, "config.json"), json.dumps(self.config.to_dict(), indent=1))
            _atomic_write_text(os.path.join(tmp, "metrics.json"),
                               json.dumps({"metrics": self.metrics, "evals": self.evals}))
            old = os.path.join(out, f".checkpoint.old{os.getpid()}")
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._emit({"type": "checkpoint", "iteration": self.iteration_done, "path": final})
        return final

    def load_checkpoint(self, path: str) -> None:
        """Continue from a checkpoint folder: same curves as an uninterrupted run."""
        from .lora import load_lora
        state_path = os.path.join(path, "state.pt")
        if not os.path.isfile(state_path):
            raise FileNotFoundError(f"no checkpoint in {path!r} (expected {state_path})")
        state = torch.load(state_path, weights_only=True, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{state_path} is not a {CHECKPOINT_FORMAT} checkpoint")
        check_resumable(self.config, path)
        load_lora(os.path.join(path, "lora.safetensors"), self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.prompt_gen.set_state(state["prompt_gen"])
        if len(state["noise_gens"]) != self.world:
            raise ValueError(f"checkpoint was written by {len(state['noise_gens'])} processes, "
                             f"resuming with {self.world}")
        self.noise_gen.set_state(state["noise_gens"][self.rank])
        if state["ema"] is not None and self.ema is not None:
            for e, s in zip(self.ema, state["ema"]):
                e.copy_(s)
        self.iteration_done = int(state["iteration"])
        self.psi = Psi.load(os.path.join(path, "psi.json"))
        with open(os.path.join(path, "metrics.json")) as f:
            saved_metrics = json.load(f)
        self.metrics, self.evals = saved_metrics["metrics"], saved_metrics["evals"]
        if self.rank == 0:
            _atomic_write_text(os.path.join(self.config.out_dir, "metrics.jsonl"),
                               "".join(json.dumps(m) + "\n" for m in self.metrics))

    # -------------------------------------------------------------------- run
    def run(self, progress: bool = False) -> TrainResult:
        """Train until `iterations` or a stop request; evaluate, checkpoint and export along the way."""
        cfg = self.config
        start = time.perf_counter()
        metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.iterations, initial=self.iteration_done, desc=cfg.advantage_mode, unit="it")
        if self.eval_prompts and not self.evals:
            self.evals.append(self.evaluate())
            self._emit({"type": "eval", **self.evals[-1]})
        stopped = False
        while self.iteration_done < cfg.iterations:
            if self.should_stop is not None and self.should_stop():
                stopped = True
                break
            m = self.iteration()
            self.metrics.append(m)
            if self.rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(m) + "\n")
            self._emit({"type": "iteration", **m, "rewards": self.last_rewards.tolist()})
            last = self.iteration_done == cfg.iterations
            if self.eval_prompts and ((cfg.eval_every and self.iteration_done % cfg.eval_every == 0) or last):
                self.evals.append(self.evaluate())
                self._emit({"type": "eval", **self.evals[-1]})
            if (cfg.save_every and self.iteration_done % cfg.save_every == 0) and not last:
                self.save_checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", kl=f"{m['kl']:.2e}")
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        if self.rank == 0:
            self.lora_path = self.export_lora(os.path.join(cfg.out_dir, "lora.safetensors"))
        wall = time.perf_counter() - start
        self._emit({"type": "done", "iteration": self.iteration_done, "stopped": stopped, "wall_s": wall})
        return TrainResult(self.metrics, self.evals, cfg.out_dir, self.lora_path, stopped, wall)
