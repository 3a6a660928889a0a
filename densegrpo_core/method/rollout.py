"""Group rollouts with dense rewards' latents: the fused sweep and the naive path (docs/method.md §4, §5, §9).

The fused sweep walks the grid once. At grid time τ(k) one batched guided forward evaluates the SDE
chain x_k and every ODE branch still running. From the chain's velocity the SDE step is taken *and* the
branch for x_k is spawned with its first Euler step, so ODE_t(x_t) costs no extra NFE at its start.
Batch grows B, 2B, …, T·B; per trajectory NFE = Σ_{k=0}^{T-1} (k+1) = T(T+1)/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .guidance import GuidedVelocity
from .schedule import validate_grid
from .sde import ode_step, sde_step
from .window import completion_indices, needed_reward_columns

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (grid index k, x_k, v_k)


@dataclass
class Rollout:
    """One group rollout. Grid order: index k ↔ paper timestep t = T - k."""

    latents: torch.Tensor  # (B, T+1, ...) x_T … x_0 of the SDE chain
    log_probs: torch.Tensor  # (B, T) float32 log p(x_{k+1} | x_k); 0 where the step has std 0
    trainable: torch.Tensor  # (T,) bool, True where the step has a density (std > 0)
    ode_endpoints: torch.Tensor | None  # (B, T, ...) ODE_n(x_k), the clean latent reached from x_k; None for SDE only
    tau: torch.Tensor  # (T+1,) grid
    sigmas: torch.Tensor  # (T,) σ_t of each step
    nfe: int  # guided velocities evaluated, all trajectories together
    forward_calls: int  # model forward calls (after chunking)

    @property
    def batch(self) -> int:
        return self.latents.shape[0]

    @property
    def steps(self) -> int:
        return self.latents.shape[1] - 1

    @property
    def nfe_per_trajectory(self) -> float:
        return self.nfe / self.batch

    def reward_latents(self) -> torch.Tensor:
        """The T+1 clean latents whose rewards are R_T … R_1, R_0 (docs/method.md §5): (B, T+1, ...)."""
        if self.ode_endpoints is None:
            raise ValueError("this rollout has no ODE endpoints (sampled with sde_chain); use fused_rollout")
        return torch.cat([self.ode_endpoints, self.latents[:, -1:]], dim=1)


def _check(x_T, tau, sigmas):
    tau = validate_grid(tau)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.shape != (tau.numel() - 1,):
        raise ValueError(f"sigmas must have one value per step ({tau.numel() - 1}), got shape {tuple(sigmas.shape)}")
    if (sigmas < 0).any() or not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas must be finite and >= 0, got {sigmas.tolist()}")
    if x_T.ndim < 2:
        raise ValueError(f"x_T must be batched latents (B, ...), got shape {tuple(x_T.shape)}")
    return tau, sigmas


@torch.no_grad()
def sde_chain(
    guide: GuidedVelocity, x_T: torch.Tensor, tau, sigmas, generator=None, on_step: StepCallback | None = None
) -> Rollout:
    """Plain SDE sampling, T NFE per trajectory, no ODE branches (what sparse-reward GRPO needs).

    `on_step(k, x_k, v_k)` is called after each step's velocity (progress bars, previews, interrupts).
    """
    tau, sigmas = _check(x_T, tau, sigmas)
    nfe0, calls0 = guide.nfe, guide.forward_calls
    B, T = x_T.shape[0], tau.numel() - 1
    rows = torch.arange(B, device=x_T.device)
    latents, log_probs, trainable = [x_T], torch.zeros(B, T), torch.zeros(T, dtype=torch.bool)
    x = x_T
    for k in range(T):
        v = guide.velocity(x, tau[k].item(), rows)
        if on_step is not None:
            on_step(k, x, v)
        step = sde_step(x, v, tau[k].item(), tau[k + 1].item(), sigmas[k].item(), generator=generator)
        if step.log_prob is not None:
            log_probs[:, k], trainable[k] = step.log_prob.cpu(), True
        x = step.x_next
        latents.append(x)
    return Rollout(
        torch.stack(latents, dim=1),
        log_probs,
        trainable,
        None,
        tau,
        sigmas,
        guide.nfe - nfe0,
        guide.forward_calls - calls0,
    )


def ode_sub_grid(T: int, k: int, n: int) -> list[int]:
    """Grid indices of ODE_n from x_k: n steps evenly spaced in index over k … T, ending at T (docs/method.md §4)."""
    if not 1 <= n <= T - k:
        raise ValueError(f"ODE steps n must be in [1, {T - k}] from grid index {k}, got {n}")
    idx = torch.linspace(k, T, n + 1).round().long().tolist()
    return idx


@torch.no_grad()
def ode_complete(
    guide: GuidedVelocity, x: torch.Tensor, rows: torch.Tensor, tau: torch.Tensor, k: int, n: int | None = None
) -> torch.Tensor:
    """ODE_n(x_k): n Euler steps from τ(k) to 0 on a sub-grid of the remaining points (docs/method.md §4)."""
    T = tau.numel() - 1
    idx = ode_sub_grid(T, k, T - k if n is None else n)
    for a, b in zip(idx[:-1], idx[1:]):
        x = ode_step(x, guide.velocity(x, tau[a].item(), rows), tau[a].item(), tau[b].item())
    return x


@torch.no_grad()
def fused_rollout(
    guide: GuidedVelocity,
    x_T: torch.Tensor,
    tau,
    sigmas,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> Rollout:
    """SDE trajectory + ODE_t(x_t) for every t in one sweep of T batched forwards (docs/method.md §9).

    `on_step(k, x_k, v_k)` is called with the chain's latent and velocity after each batched forward.
    """
    tau, sigmas = _check(x_T, tau, sigmas)
    B, T = x_T.shape[0], tau.numel() - 1
    nfe0, calls0 = guide.nfe, guide.forward_calls
    chain_rows = torch.arange(B, device=x_T.device)
    latents, log_probs, trainable = [x_T], torch.zeros(B, T), torch.zeros(T, dtype=torch.bool)
    branches = x_T.new_zeros((0, *x_T.shape[1:]))  # (k·B, ...) running ODE branches
    branch_rows = chain_rows[:0]  # (k·B,) trajectory of each branch
    x = x_T
    for k in range(T):
        t, t_next = tau[k].item(), tau[k + 1].item()
        v = guide.velocity(torch.cat([x, branches]), t, torch.cat([chain_rows, branch_rows]))
        v_chain, v_branches = v[:B], v[B:]  # (B, ...), (k·B, ...)
        if on_step is not None:
            on_step(k, x, v_chain)
        spawned = ode_step(x, v_chain, t, t_next)  # first Euler step of ODE_t(x_k)
        branches = torch.cat([ode_step(branches, v_branches, t, t_next), spawned])
        branch_rows = torch.cat([branch_rows, chain_rows])
        step = sde_step(x, v_chain, t, t_next, sigmas[k].item(), generator=generator)
        if step.log_prob is not None:
            log_probs[:, k], trainable[k] = step.log_prob.cpu(), True
        x = step.x_next
        latents.append(x)
    # branches are ordered by spawn index k, then trajectory: (T·B, ...) → (B, T, ...)
    ode_endpoints = branches.reshape(T, B, *x_T.shape[1:]).transpose(0, 1)
    return Rollout(
        torch.stack(latents, dim=1),
        log_probs,
        trainable,
        ode_endpoints,
        tau,
        sigmas,
        guide.nfe - nfe0,
        guide.forward_calls - calls0,
    )


@torch.no_grad()
def naive_rollout(
    guide: GuidedVelocity,
    x_T: torch.Tensor,
    tau,
    sigmas,
    generator: torch.Generator | None = None,
    ode_steps: int | None = None,
    on_step: StepCallback | None = None,
) -> Rollout:
    """SDE chain, then a separate ODE_n(x_t) from every x_t: T + Σ n_t NFE per trajectory.

    `ode_steps` = n caps each rollout at n steps (ODE_min(n, t)); None uses n = t (docs/method.md §4).
    """
    tau, sigmas = _check(x_T, tau, sigmas)
    nfe0, calls0 = guide.nfe, guide.forward_calls
    B, T = x_T.shape[0], tau.numel() - 1
    chain = sde_chain(guide, x_T, tau, sigmas, generator, on_step)
    rows = torch.arange(B, device=x_T.device)
    ends = [
        ode_complete(guide, chain.latents[:, k], rows, tau, k, None if ode_steps is None else min(ode_steps, T - k))
        for k in range(T)
    ]
    return Rollout(
        chain.latents,
        chain.log_probs,
        chain.trainable,
        torch.stack(ends, dim=1),
        tau,
        sigmas,
        guide.nfe - nfe0,
        guide.forward_calls - calls0,
    )


def rollout(
    guide: GuidedVelocity,
    x_T: torch.Tensor,
    tau,
    sigmas,
    generator=None,
    ode_steps: int | None = None,
    on_step: StepCallback | None = None,
) -> Rollout:
    """The rollout to use: the fused sweep for n = t (default), the naive path for ODE_n with n < t."""
    T = len(tau) - 1
    if ode_steps is None or ode_steps >= T:
        return fused_rollout(guide, x_T, tau, sigmas, generator, on_step)
    return naive_rollout(guide, x_T, tau, sigmas, generator, ode_steps, on_step)


@dataclass
class WindowRollout(Rollout):
    """A rollout with an SDE window: ODE completions only from the latents `completed` (docs/method.md §10)."""

    completed: tuple[int, ...] = ()  # grid indices k whose ODE_n(x_k) is ode_endpoints[:, i], in this order

    def reward_latents(self) -> torch.Tensor:
        """The completed clean latents, then x_0: (B, len(completed) + 1, ...)."""
        return torch.cat([self.ode_endpoints, self.latents[:, -1:]], dim=1)


def completion_steps(steps: int, k: int, ode_steps: int | None) -> int:
    """n_k, the Euler steps of the completion from x_k: T − k for n = t, else min(n, T − k) (docs/method.md §4)."""
    return steps - k if ode_steps is None else min(ode_steps, steps - k)


@torch.no_grad()
def window_rollout(
    guide: GuidedVelocity,
    x_T: torch.Tensor,
    tau,
    sigmas,
    completions: Sequence[int],
    ode_steps: int | None = None,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> WindowRollout:
    """SDE chain (σ_k = 0 outside the window, see `window.window_sigmas`) + ODE_n(x_k) for the grid indices
    `completions` only, in one walk of the grid (docs/method.md §9-§10).

    As in `fused_rollout`, the completion from x_k takes its first Euler step with the chain's velocity at k
    (free); after that a branch is evaluated at the next grid index of its sub-grid (`ode_sub_grid`), batched
    with the chain. NFE per trajectory = T + Σ_{k ∈ completions} (n_k − 1).
    """
    tau, sigmas = _check(x_T, tau, sigmas)
    B, T = x_T.shape[0], tau.numel() - 1
    completions = sorted(set(int(k) for k in completions))
    if any(not 0 <= k < T for k in completions):
        raise ValueError(f"completions must be grid indices in [0, {T}), got {completions}")
    nfe0, calls0 = guide.nfe, guide.forward_calls
    chain_rows = torch.arange(B, device=x_T.device)
    latents, log_probs, trainable = [x_T], torch.zeros(B, T), torch.zeros(T, dtype=torch.bool)
    grids = {k: ode_sub_grid(T, k, completion_steps(T, k, ode_steps)) for k in completions}
    branches: dict[int, torch.Tensor] = {}  # spawn index k → (B, ...) branch latent, at grid index at[k]
    at: dict[int, int] = {}  # spawn index k → position of the branch in grids[k]
    x = x_T
    for k in range(T):
        t = tau[k].item()
        due = [j for j in branches if grids[j][at[j]] == k]  # branches whose next evaluation is at grid index k
        v = guide.velocity(torch.cat([x, *(branches[j] for j in due)]), t, chain_rows.repeat(1 + len(due)))
        v_chain = v[:B]  # (B, ...)
        for i, j in enumerate(due):  # the next Euler step of each due branch
            nxt = grids[j][at[j] + 1]
            branches[j] = ode_step(branches[j], v[(i + 1) * B : (i + 2) * B], t, tau[nxt].item())
            at[j] += 1
        if on_step is not None:
            on_step(k, x, v_chain)
        if k in grids:  # spawn ODE_n(x_k) with its first Euler step from the chain's velocity
            branches[k], at[k] = ode_step(x, v_chain, t, tau[grids[k][1]].item()), 1
        step = sde_step(x, v_chain, t, tau[k + 1].item(), sigmas[k].item(), generator=generator)
        if step.log_prob is not None:
            log_probs[:, k], trainable[k] = step.log_prob.cpu(), True
        x = step.x_next
        latents.append(x)
    ends = [branches[k] for k in completions]  # every branch has reached grid index T
    return WindowRollout(
        torch.stack(latents, dim=1),
        log_probs,
        trainable,
        torch.stack(ends, dim=1) if ends else x_T.new_zeros((B, 0, *x_T.shape[1:])),  # (B, len(completions), ...)
        tau,
        sigmas,
        guide.nfe - nfe0,
        guide.forward_calls - calls0,
        tuple(completions),
    )


def predicted_nfe(
    steps: int,
    ode_steps: int | None = None,
    fused: bool = True,
    window: tuple[int, int] | None = None,
    reward_offsets: Sequence[int] = (0, 1),
    trained_steps: int | None = None,
) -> int:
    """Predicted NFE per trajectory of sampling + the rollouts that give the latent rewards (docs/method.md §9-§10).

    No window: n = t (`ode_steps` None or >= T): T(T+1)/2 fused, T + T(T+1)/2 naive; n < t: the naive path,
    T + Σ_t min(n, t). With `window` = (start, W): the windowed sweep, T + Σ_{k ∈ C} (n_k − 1), where C are the
    completions (`window.completion_indices`) that a mode with `reward_offsets` needs for its trained steps
    (the window's steps below `trained_steps`, default all); `reward_offsets` = () is a sparse mode (T).
    (`Rollout.nfe_per_trajectory` is the measured count.)
    """
    if window is not None:
        start, size = window
        cap = steps if trained_steps is None else trained_steps
        trained = [k for k in range(start, start + size) if k < cap]
        columns = needed_reward_columns(trained, reward_offsets, steps)
        return steps + sum(completion_steps(steps, k, ode_steps) - 1 for k in completion_indices(columns, start, size))
    if ode_steps is not None and ode_steps < steps:
        return steps + sum(min(ode_steps, t) for t in range(1, steps + 1))
    rollouts = steps * (steps + 1) // 2
    return rollouts if fused else steps + rollouts


@torch.no_grad()
def ode_sample(guide: GuidedVelocity, x_T: torch.Tensor, tau) -> torch.Tensor:
    """Plain deterministic Euler sampling from x_T (evaluation sampler)."""
    tau = validate_grid(tau)
    rows = torch.arange(x_T.shape[0], device=x_T.device)
    return ode_complete(guide, x_T, rows, tau, 0)
