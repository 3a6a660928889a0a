"""The method: every equation of DenseGRPO and Flow-GRPO as one named function (docs/method.md §1-§10).

- `schedule`   flow-time grids (§1), ψ(t) and the SDE noise scale σ_t, the psi.json file (§2)
- `sde`        one SDE step, its float32 log-probability, the Euler ODE step (§3-§4)
- `guidance`   the guided velocity (classifier-free guidance) and its NFE count (§7, §9)
- `rollout`    the fused sweep: SDE chain and every ODE branch in one walk of the grid (§4, §9)
- `window`     the SDE window: placement, σ outside it, which latents need an ODE completion (§10)
- `advantages` ΔR_t, prompt groups, and the advantage modes as records (§5-§6)
- `objective`  the PPO-clip + KL loss (§7)
- `calibrate`  Algorithm 1, the per-step calibration of ψ (§8)

May import: torch and `densegrpo_core.util`. Never models, rewards, training or anything above them: the
method works on tensors and on any callable velocity model.
"""
