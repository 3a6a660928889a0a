"""GRPO training of a LoRA with dense (per-step) rewards: DenseGRPO and its baselines (docs/method.md §5-§7).

One iteration, top to bottom (see `Trainer.iteration`):
    prompts → fused rollout (SDE chain + ODE branches, no grad) → decode + reward all T+1 endpoints
    → advantages (mode) → PPO-clip + KL updates over the trained steps, shuffled, adapter-off reference.
Runs on CPU or CUDA, float32 or bf16 autocast (log-probs and rewards stay float32), one process or
several under `torchrun` (whole prompt groups per rank, rewards gathered for statistics, LoRA gradients
all-reduced, rank 0 writes files).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..method.advantages import advantage_mode, dense_rewards, group_advantages, prompt_groups
from ..method.calibrate import sign_counts
from ..method.objective import grpo_loss
from ..method.rollout import rollout, sde_chain, window_rollout
from ..method.schedule import Psi, as_psi, flow_grid, sde_noise_scales
from ..method.sde import gaussian_log_prob, sde_step_mean, sde_step_std
from ..method.window import completion_indices, fill_window_rewards, needed_reward_columns, window_sigmas
from ..models import lora
from ..models.pipeline import FlowPipeline, evaluate_ode, latent_rewards, score_images, score_latents
from ..resources.estimate import model_info, rollout_max_batch
from ..resources.memory import StageMeter, enable_gradient_checkpointing, offloaded
from ..rewards.calls import CheckedReward
from ..util.atomic import WriteFailed, append_line
from . import checkpoint, distributed, ema, export, health
from .checkpoint import CHECKPOINT_FORMAT
from .config import TrainConfig, check_resumable, trained_steps
from .optimizer import build_optimizer
from .run_lock import RunLock
from .tensorboard_log import TensorBoardLog

__all__ = ["CHECKPOINT_FORMAT", "TrainConfig", "TrainResult", "Trainer", "check_resumable"]


@dataclass
class TrainResult:
    metrics: list[dict]  # one record per iteration
    evals: list[dict]  # {"iteration", "reward_mean", ...}
    out_dir: str
    lora_path: str | None
    stopped: bool = False
    wall_s: float = 0.0


def build_eval_rewards(names, paths=None, device: str = "cpu") -> dict[str, Callable]:
    """The held-out rewards `eval_rewards` names (registry names or "module:function"), with their model files
    from `paths` ({name: path}) where they need one; a clear error naming the reward otherwise."""
    from ..rewards import get_reward

    out = {}
    for name in names:
        path = (paths or {}).get(name) if isinstance(paths, dict) else None
        try:
            out[name] = get_reward(name, path, device=device)
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise ValueError(f"eval_rewards: {name!r} could not be built: {e}") from e
    return out


@dataclass
class Trainer:
    """Owns the LoRA-injected model, optimizer and RNG of one run; `run()` trains, `iteration()` is one step."""

    config: TrainConfig
    pipe: FlowPipeline
    reward: Callable
    train_prompts: Sequence[str]
    eval_prompts: Sequence[str] = ()
    on_event: Callable[[dict], None] | None = None  # receives {"type": ..., ...} events (rank 0 only)
    should_stop: Callable[[], bool] | None = None  # polled between iterations
    eval_rewards: dict[str, Callable] | None = None  # name → reward that also scores the evaluation images
    # (held-out rewards, to see reward hacking); None: built from config.eval_rewards
    metrics: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    run_lock: RunLock | None = None  # a lock on out_dir already held by the caller (the CLI takes it before
    # loading anything); None: run() takes one on rank 0 (a second run into the same out_dir is refused)

    def __post_init__(self):
        config = self.config
        if not self.train_prompts:
            raise ValueError("train prompts must not be empty")
        self.rank, self.world = distributed.rank_and_world()
        config.prompts_per_rank(self.world)  # divisible, or a clear error
        self.device = torch.device(config.device)
        self.autocast_dtype = torch.bfloat16 if config.dtype == "bfloat16" else None
        self.shift = self.pipe.default_shift if config.shift is None else config.shift
        self.cfg_scale = self.pipe.default_cfg if config.cfg_scale is None else config.cfg_scale
        self.tau = self.grid(config.steps)  # (T+1,)
        psi = Psi.load(config.psi) if isinstance(config.psi, str) else as_psi(config.psi, config.steps)
        self.psi = as_psi(psi, config.steps).check_grid(self.tau.tolist(), "the training grid")
        self.prompts = list(dict.fromkeys(self.train_prompts))  # distinct texts: a group is keyed by its text
        if config.prompts_per_iteration > len(self.prompts):
            raise ValueError(
                f"prompts_per_iteration ({config.prompts_per_iteration}) exceeds the {len(self.prompts)} "
                f"distinct training prompts: a batch draws its prompts without replacement"
            )
        self.sigmas = sde_noise_scales(self.psi.tensor(config.steps), self.tau)  # (T,)
        self.tb = None  # the TensorBoard log while run() runs (logger = "tensorboard", rank 0)
        if self.eval_rewards is None:
            self.eval_rewards = build_eval_rewards(config.eval_rewards, config.eval_reward_path, config.device)
        self.pipe.model.to(self.device)
        # the LoRA lives in the diffusion network; its module names are the LoRA file's keys
        model = self.pipe.model if self.pipe.lora_module is None else self.pipe.lora_module
        for p in self.pipe.model.parameters():
            p.requires_grad_(False)
        self.targets = config.lora_targets if config.lora_targets != "auto" else self.pipe.arch
        lora.inject_lora(
            model,
            self.targets,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            seed=config.seed,
            init=config.lora_init,
        )
        for p in lora.lora_parameters(model):  # float32 master weights on bf16/fp16 base weights (peft copies
            p.data = p.data.float()  # the base dtype); autocast still runs the matmuls in bf16
        if config.init_lora:
            lora.load_lora(config.init_lora, model, prefix=self.pipe.lora_prefix)
        self.model = model
        self.params = lora.lora_parameters(model)
        if config.grad_checkpointing:
            enable_gradient_checkpointing(model, self.pipe.block_lists)
        self.optimizer = build_optimizer(
            config.optimizer, self.params, config.lr, config.adam_betas, config.weight_decay
        )
        self.max_batch = self._rollout_max_batch()
        self.meter = StageMeter(self.device)  # seconds per stage; peak memory on CUDA
        self.ema = ema.init_ema(self.params, config.ema_decay)
        self.optimizer_steps_done = 0  # over the whole run (Flow-GRPO's global_step: the EMA schedule reads it)
        self.prompt_gen = torch.Generator().manual_seed(config.seed % 2**64)  # same on every rank
        self.noise_gen = torch.Generator().manual_seed((config.seed * 1000 + 1 + self.rank) % 2**64)  # any 64-bit seed
        self.iteration_done = 0
        self.saved_iteration = None  # the iteration this process last checkpointed
        self.lora_path = None
        self.last_rewards = None  # R (B_all, T+1) of the last iteration
        if self.rank == 0:
            os.makedirs(config.out_dir, exist_ok=True)

    # ----------------------------------------------------------------- helpers
    def grid(self, steps: int) -> torch.Tensor:
        """The flow-time grid of `steps` steps: the configured explicit grid, or the named one (docs/method.md §1)."""
        config = self.config
        if isinstance(config.grid, list) and steps == config.steps:
            return torch.tensor(config.grid, dtype=torch.float32)
        return flow_grid(steps, self.shift, config.grid if isinstance(config.grid, str) else "sd3")

    def _emit(self, event: dict) -> None:
        if self.rank == 0 and self.on_event is not None:
            self.on_event(event)

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        )

    def _offload_reward(self):
        """With `offload_reward`, the decoder's and reward model's torch modules sit on the CPU inside the block."""
        return offloaded(
            self.pipe.decode, self.reward, exclude=(self.pipe.model, self.model), enabled=self.config.offload_reward
        )

    def _rollout_max_batch(self) -> int:
        """max_batch, lowered so one no-grad forward's activations fit `rollout_memory_gb` (estimate.py)."""
        config = self.config
        if config.rollout_memory_gb is None:
            return config.max_batch
        cond = self.pipe.encode([self.train_prompts[0]])
        tokens = [
            v.shape[1]
            for v in (cond.values() if isinstance(cond, dict) else [cond])
            if isinstance(v, torch.Tensor) and v.ndim == 3
        ]
        try:
            info = model_info(self.model, self.pipe.latent_shape, context_tokens=max(tokens, default=0))
        except ValueError as e:
            raise ValueError(
                f"rollout_memory_gb needs a model the estimator can count ({e}); set max_batch instead"
            ) from None
        rows = rollout_max_batch(config.rollout_memory_gb * 2**30, info, config, kind=self.device.type)
        return min(config.max_batch, rows)

    def _gather(self, t: torch.Tensor, what: str) -> torch.Tensor:
        return distributed.gather(t, self.world, self.device, f"{what} (iteration {self.iteration_done + 1})")

    def _draw_prompts(self) -> tuple[list[str], torch.Tensor]:
        """This rank's prompts, each repeated G times, and the group ids of the whole batch (B_all,).

        The batch's prompts are drawn without replacement, the same draw on every rank (docs/method.md §6); a
        group is keyed by prompt text, so the ids hold across ranks.
        """
        config = self.config
        idx = torch.randperm(len(self.prompts), generator=self.prompt_gen)[: config.prompts_per_iteration].tolist()
        batch = [self.prompts[i] for i in idx for _ in range(config.group_size)]  # (B_all,) rank-major
        B = config.prompts_per_rank(self.world) * config.group_size  # this rank's trajectories
        return batch[self.rank * B : (self.rank + 1) * B], prompt_groups(batch)

    # ------------------------------------------------------------- iteration
    def iteration(self) -> dict:
        """One GRPO iteration: rollout, rewards, advantages, PPO updates. Returns its metrics."""
        config, T = self.config, self.config.steps
        t0 = time.perf_counter()
        self.meter.reset()
        prompts, groups_all = self._draw_prompts()
        B = len(prompts)
        mode = advantage_mode(config.advantage_mode)
        dense = mode.needs_ode_branches
        W = config.sde_window
        start = config.window_start(self.iteration_done) if W else 0  # the SDE window [start, start+W) (§10)
        self.model.eval()
        with self.meter.stage("rollout"), self._offload_reward(), torch.no_grad(), self._autocast():
            x_T = torch.randn((B, *self.pipe.latent_shape), generator=self.noise_gen).to(self.device)
            guide = self.pipe.guide(prompts, self.cfg_scale, self.max_batch, self.device)
            if W:  # ODE outside the window; completions only from the latents the advantages read
                sigmas = window_sigmas(self.sigmas, start, W)  # (T,)
                columns = needed_reward_columns(
                    range(start, min(start + W, config.trained_step_count)), mode.reward_offsets, T
                )
                completions = completion_indices(columns, start, W) if dense else []
                ro = window_rollout(guide, x_T, self.tau, sigmas, completions, config.ode_steps, self.noise_gen)
            elif dense:  # SDE chain + ODE_t(x_t) for every t: T(T+1)/2 NFE per trajectory
                ro = rollout(guide, x_T, self.tau, self.sigmas, self.noise_gen, config.ode_steps)
            else:  # sparse modes only observe R_0: the SDE chain alone, T NFE
                ro = sde_chain(guide, x_T, self.tau, self.sigmas, self.noise_gen)

        with self.meter.stage("reward"):
            # every call checked (one finite score per image) and time-limited; errors name the reward and call
            reward = CheckedReward(self.reward, f"iteration {self.iteration_done + 1}", config.reward_timeout_s)
            if W and dense:  # R_c of the completed latents, R_0 after the window, the rest filled (§10)
                R_done = latent_rewards(ro, prompts, self.pipe.decode, reward, config.reward_batch)  # (B, C+1)
                known = {k: R_done[:, i] for i, k in enumerate(ro.completed)}
                R_local = fill_window_rewards(known, R_done[:, -1], start, W, T)  # (B, T+1)
            elif dense:
                R_local = latent_rewards(ro, prompts, self.pipe.decode, reward, config.reward_batch)  # (B, T+1)
            else:  # only R_0 is known; it fills every column so the advantage code sees (B, T+1)
                R0 = score_latents(ro.latents[:, -1].float(), prompts, self.pipe.decode, reward, config.reward_batch)
                R_local = R0[:, None].expand(B, T + 1).contiguous()

        R = self._gather(R_local, "gather rewards")  # (B_all, T+1)
        lat_all = self._gather(ro.latents.float(), "gather latents") if mode.needs_latents else None
        A_all = group_advantages(
            R,
            groups_all,
            config.advantage_mode,
            latents=lat_all,
            global_std=config.std_over_batch,
            clip=config.adv_clip,
        )  # (B_all, T)
        A = A_all[self.rank * B : (self.rank + 1) * B]  # (B, T)

        steps = trained_steps(config, ro.trainable)
        with self.meter.stage("update"), self._offload_reward():
            update_stats = self.update(ro, prompts, A, steps)

        self.iteration_done += 1
        m = {
            "iteration": self.iteration_done,
            "reward_mean": R[:, -1].mean().item(),
            "reward_std": R[:, -1].std(unbiased=False).item(),
        }
        dR = dense_rewards(R) if dense else None  # (B_all, T)
        if dense:
            pos, neg = sign_counts(dR)
            m.update(
                {
                    # R_T, the pure-ODE reward: known unless a window left x_T's completion out (§10)
                    **({"ode_reward_mean": R[:, 0].mean().item()} if not W or start in ro.completed else {}),
                    "dR_mean": dR.mean(0).tolist(),
                    "dR_pos": pos.tolist(),
                    "dR_neg": neg.tolist(),
                }
            )
        finite = [c for c in range(T + 1) if torch.isfinite(R[:, c]).all()]  # the columns the rollout computed
        m.update(health.health(R, groups_all, dR, steps, update_stats, columns=finite))
        m.update(
            {
                "adv_std": A_all[:, steps].std().item() if steps else 0.0,
                "nfe": ro.nfe * self.world,
                "nfe_per_trajectory": ro.nfe_per_trajectory,
                **({"sde_window_start": start, "sde_window_end": start + W} if W else {}),
                "trained_steps": steps,
                **update_stats,
                **self.meter.last,
                "iteration_s": time.perf_counter() - t0,
            }
        )
        self.last_rewards = R
        return m

    def update(self, ro, prompts: list[str], A: torch.Tensor, steps: list[int]) -> dict:
        """PPO-clip + KL over the trained steps; one optimizer step per `grad_accum` minibatches (docs/method.md §7)."""
        config = self.config
        B = A.shape[0]
        active = (A[:, steps] != 0).any(dim=1).nonzero().flatten() if steps else A.new_zeros(0, dtype=torch.long)
        stats = {"loss": [], "policy_loss": [], "kl": [], "ratio_mean": [], "clip_frac": []}
        n_opt, grad_norms = 0, []
        n_mb = distributed.max_over_ranks(  # every rank takes as many steps
            -(-len(active) // config.train_batch),
            self.world,
            self.device,
            f"minibatch count (iteration {self.iteration_done + 1})",
        )
        if n_mb == 0:
            return {"skipped_samples": B, "optimizer_steps": 0, **{k: 0.0 for k in stats}, "grad_norm": 0.0}
        guide = self.pipe.guide(
            prompts, self.cfg_scale, self.max_batch, self.device, detach_uncond=not config.uncond_grad
        )
        self.model.train()
        for _ in range(config.inner_epochs):
            order = active[torch.randperm(len(active), generator=self.noise_gen)]
            minibatches = [mb for mb in order.split(config.train_batch) if len(mb)]  # none if nothing active
            for mb_i in range(n_mb):
                if mb_i < len(minibatches):  # a rank with fewer active samples contributes zero gradient
                    self._accumulate(ro, guide, minibatches[mb_i], A, steps, stats)
                if (mb_i + 1) % config.grad_accum == 0 or mb_i == n_mb - 1:
                    grad_norms.append(self._optimizer_step())
                    n_opt += 1
        self.model.eval()
        return {
            "skipped_samples": B - len(active),
            "optimizer_steps": n_opt,
            "grad_norm": sum(grad_norms) / len(grad_norms),
            **{k: sum(v) / len(v) if v else 0.0 for k, v in stats.items()},
        }

    def _accumulate(self, ro, guide, mb: torch.Tensor, A: torch.Tensor, steps: list[int], stats: dict) -> None:
        """Backpropagate the loss of one minibatch of trajectories over the trained steps, shuffled
        (docs/method.md §7)."""
        config = self.config
        step_order = [steps[j] for j in torch.randperm(len(steps), generator=self.noise_gen).tolist()]
        rows = mb.to(self.device)
        for k in step_order:
            tau, tau_next, sigma = self.tau[k].item(), self.tau[k + 1].item(), self.sigmas[k].item()
            x = ro.latents[mb, k].to(self.device)  # (b, ...)
            x_next = ro.latents[mb, k + 1].to(self.device)
            with self._autocast():
                v = guide.velocity(x, tau, rows)
            mean = sde_step_mean(x, v, tau, tau_next, sigma)  # float32, with grad
            log_prob = gaussian_log_prob(x_next, mean, sde_step_std(tau, tau_next, sigma))
            with torch.no_grad(), lora.adapters_disabled(self.model), self._autocast():
                mean_ref = sde_step_mean(x, guide.velocity(x, tau, rows), tau, tau_next, sigma)
            loss, s = grpo_loss(
                log_prob,
                ro.log_probs[mb, k].to(self.device),
                A[mb, k].to(self.device),
                mean,
                mean_ref,
                sigma,
                config.clip_range,
                config.beta,
            )
            (loss / (len(step_order) * config.grad_accum)).backward()
            for key in stats:
                stats[key].append(s[key])

    def _optimizer_step(self) -> float:
        distributed.average_gradients(
            self.params, self.world, f"average gradients (iteration {self.iteration_done + 1})"
        )
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps_done += 1
        ema.update_ema(self.ema, self.params, self.config.ema_decay, self.optimizer_steps_done, self.config.ema_every)
        return norm

    # ------------------------------------------------------------ evaluation
    def ema_weights(self):
        """Inside the block the LoRA holds its EMA weights (when `ema_decay` is set): evaluation and export."""
        return ema.ema_swapped_in(self.params, self.ema)

    def evaluate(self) -> dict:
        """Mean reward of plain-ODE samples on the evaluation prompts (EMA weights when enabled); with
        `eval_images`, rank 0 saves their grid as out_dir/samples/eval_<iteration>.png (a row per prompt)."""
        config = self.config
        where = (
            f"evaluation after iteration {self.iteration_done}" if self.iteration_done else "evaluation before training"
        )
        with self.ema_weights():
            res = evaluate_ode(
                self.pipe,
                CheckedReward(self.reward, where, config.reward_timeout_s),
                self.eval_prompts,
                seeds=config.eval_seeds,
                tau=self.grid(config.eval_steps),
                cfg_scale=self.cfg_scale,
                device=self.device,
                max_batch=self.max_batch,
                autocast_dtype=self.autocast_dtype,
            )
        if config.eval_images and self.rank == 0:
            from ..util.plots import save_image_grid

            images = self._decode_all(res["latents"])
            os.makedirs(os.path.join(config.out_dir, "samples"), exist_ok=True)
            save_image_grid(
                images,
                os.path.join(config.out_dir, "samples", f"eval_{self.iteration_done:05d}.png"),
                ncol=len(config.eval_seeds),
            )
        held_out, images = {}, None
        if self.eval_rewards or self.tb is not None:
            images = self._decode_all(res["latents"])
        if self.eval_rewards:
            prompts = [p for p in self.eval_prompts for _ in config.eval_seeds]
            for name, reward in self.eval_rewards.items():
                checked = CheckedReward(reward, f"held-out {where}", config.reward_timeout_s)
                held_out[name] = score_images(images, prompts, checked, config.reward_batch).mean().item()
        result = {
            "iteration": self.iteration_done,
            "reward_mean": res["reward_mean"],
            "reward_std": res["reward_std"],
            "n": res["n"],
            **({"eval_rewards": held_out} if held_out else {}),  # not "rewards": iteration events' R
        }
        if self.tb is not None:
            self.tb.evaluation(result, images, ncol=len(config.eval_seeds))
        return result

    @torch.no_grad()
    def _decode_all(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (N, H, W, 3) in [0, 1] on the CPU of model-space latents (N, ...), decoded in reward batches."""
        return torch.cat(
            [self.pipe.decode(x.to(self.device)).float().cpu() for x in latents.split(self.config.reward_batch)]
        )

    # ------------------------------------------------------- save and resume
    def lora_metadata(self) -> dict:
        return export.lora_metadata(self)

    def export_lora(self, path: str) -> str:
        """Write the (EMA, if enabled) LoRA atomically in ComfyUI's key format (export.py)."""
        return export.export_lora(self, path)

    def save_checkpoint(self) -> str | None:
        """A new complete checkpoint (LoRA, optimizer, RNG, ψ, config, metrics) reached by `out_dir/checkpoint`,
        never a moment without one (checkpoint.py, docs/robustness.md)."""
        final = checkpoint.save_checkpoint(self)
        self.saved_iteration = self.iteration_done
        if final is not None:
            self._emit({"type": "checkpoint", "iteration": self.iteration_done, "path": final})
        return final

    def load_checkpoint(self, path: str) -> str:
        """Continue from a checkpoint: a checkpoint folder, `out_dir/checkpoint` or an out_dir (the newest complete
        save); same curves as an uninterrupted run (checkpoint.py). → the folder it loaded."""
        return checkpoint.load_checkpoint(self, path)

    # -------------------------------------------------------------------- run
    def run(self, progress: bool = False) -> TrainResult:
        """Train until `iterations` or a stop request; evaluate, checkpoint and export along the way.

        Rank 0 holds the lock on out_dir throughout (RunLockedError, naming the holder, if another live run
        has it). A stop request (`should_stop`, polled at each iteration boundary) is shared by all ranks, so
        every rank stops after the same iteration; the run then saves a checkpoint and returns `stopped`."""
        lock = None
        if self.rank == 0 and (self.run_lock is None or not self.run_lock.held):
            lock = RunLock(self.config.out_dir).acquire()
        try:
            return self._run(progress)
        finally:
            if lock is not None:
                lock.release()

    def _log(self, name: str, record: dict) -> None:
        """Append `record` to out_dir/`name` (rank 0); WriteFailed naming the file, no partial line, on failure."""
        if self.rank == 0:
            path = os.path.join(self.config.out_dir, name)
            try:
                append_line(path, json.dumps(record))
            except WriteFailed as e:
                raise WriteFailed(path, e.error, hint=checkpoint._resume_hint(self.config.out_dir)) from e.error

    def _stop_requested(self) -> bool:
        """The stop request of any rank, the same answer on every rank (one all-reduce per iteration)."""
        local = bool(self.should_stop is not None and self.should_stop())
        if self.world == 1:
            return local
        what = f"stop flag (after iteration {self.iteration_done})"
        return distributed.any_rank(local, self.world, self.device, what)

    def _run(self, progress: bool) -> TrainResult:
        config = self.config
        start = time.perf_counter()
        if self.rank == 0:  # the logs hold this run's history: empty, or a resumed checkpoint's
            try:
                checkpoint.write_logs(self)
            except OSError as e:
                raise WriteFailed(os.path.join(config.out_dir, "metrics.jsonl"), e) from e
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.iterations, initial=self.iteration_done, desc=config.advantage_mode, unit="it")
        self.tb = TensorBoardLog(config.out_dir) if config.logger == "tensorboard" and self.rank == 0 else None
        if self.eval_prompts and not self.evals:
            self.evals.append(self.evaluate())
            self._log("evals.jsonl", self.evals[-1])
            self._emit({"type": "eval", **self.evals[-1]})
        stopped = False
        while self.iteration_done < config.iterations:
            if self._stop_requested():
                stopped = True
                break
            m = self.iteration()
            last = self.iteration_done == config.iterations
            evaluated = bool(self.eval_prompts) and (
                (config.eval_every and self.iteration_done % config.eval_every == 0) or last
            )
            if evaluated:  # the evaluation after this iteration goes into its metrics line too
                self.evals.append(self.evaluate())
                m["eval"] = {k: v for k, v in self.evals[-1].items() if k != "iteration"}
            self.metrics.append(m)
            self._log("metrics.jsonl", m)
            if evaluated:
                self._log("evals.jsonl", self.evals[-1])
            self._emit({"type": "iteration", **m, "rewards": self.last_rewards.tolist()})
            if self.tb is not None:
                self.tb.iteration(m)
            if evaluated:
                self._emit({"type": "eval", **self.evals[-1]})
            if (config.save_every and self.iteration_done % config.save_every == 0) and not last:
                self.save_checkpoint()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", kl=f"{m['kl']:.2e}")
        if bar is not None:
            bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.saved_iteration != self.iteration_done:  # a stop right after a periodic save has nothing new
            self.save_checkpoint()
        if self.rank == 0:
            path = os.path.join(config.out_dir, "lora.safetensors")
            try:
                self.lora_path = self.export_lora(path)
            except Exception as e:  # noqa: BLE001 - disk full, read-only: name the file (the checkpoint is saved)
                raise WriteFailed(path, e, "the LoRA", checkpoint._resume_hint(config.out_dir)) from e
        wall = time.perf_counter() - start
        self._emit({"type": "done", "iteration": self.iteration_done, "stopped": stopped, "wall_s": wall})
        return TrainResult(self.metrics, self.evals, config.out_dir, self.lora_path, stopped, wall)
