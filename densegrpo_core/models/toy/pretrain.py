"""Rectified-flow pretraining of the toy DiT (the base model DenseGRPO fine-tunes).

    python -m densegrpo_core.models.toy.pretrain --steps 1200 --seed 0 \
        --out densegrpo_core/models/toy/weights/toy_dit.safetensors

Loss ‖v_θ(x(τ), τ, c) − (ε − x_clean)‖² with x(τ) = (1−τ)·x_clean + τ·ε (docs/method.md §1), τ ~ logit-normal(0, 1)
as in SD3, fresh renders of the training prompts every step, and 10% of prompts replaced by the null prompt
so that classifier-free guidance works. The model is deliberately under-trained: it follows prompts but
leaves reward on the table for RL to gain. After training, the sampling shift and CFG scale that give the
best reward on training prompts are stored with the weights as the recommended sampling settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from ...method.guidance import GuidedVelocity
from ...method.rollout import ode_sample
from ...method.schedule import shifted_linspace_grid
from ...util.atomic import atomic_write
from .model import WEIGHTS_FORMAT, ToyDiT, ToyDiTConfig, encode_prompts, null_cond
from .reward import toy_reward
from .task import LATENT_SHAPE, decode, eval_prompts, render, train_prompts

SAMPLING_SHIFTS = (1.0, 3.0)  # grid shifts tried for the recommended sampling settings
SAMPLING_CFG_SCALES = (1.5, 3.0, 4.5)  # CFG scales tried
SAMPLING_STEPS = 10  # T of the evaluation sampler (the RL sampling grid)


@dataclass
class PretrainConfig:
    steps: int = 1200  # optimiser steps (few on purpose: eval reward ~0.6 vs ~0.93 for renders)
    batch_size: int = 64  # fresh renders per step
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup: int = 100  # linear warm-up steps, then cosine decay to lr/10
    cond_dropout: float = 0.1  # fraction of prompts replaced by the null prompt (for CFG)
    seed: int = 0  # seeds initialisation, data and τ/ε draws
    threads: int = 1  # torch CPU threads (the toy is meant to run beside other work)
    eval_every: int = 250  # steps between logged evaluations (0: only at the end)
    eval_seeds: int = 4  # noise seeds per prompt in evaluations


def rectified_flow_loss(
    model: ToyDiT, x_clean: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """Mean ‖v_θ(x(τ), τ, c) − (ε − x_clean)‖² over elements (docs/method.md §1)."""
    t = tau.view(-1, 1, 1, 1)
    x_tau = (1 - t) * x_clean + t * eps  # (B, C, H, W)
    return ((model(x_tau, tau, cond) - (eps - x_clean)) ** 2).mean()


@torch.no_grad()
def guided_ode_sample(
    model: ToyDiT, noise: torch.Tensor, cond: torch.Tensor, tau: torch.Tensor, cfg_scale: float
) -> torch.Tensor:
    """The core's guided Euler ODE sampler (docs/method.md §4) on the toy model: → (B, C, H, W)."""
    guide = GuidedVelocity(model, cond, null_cond(noise.shape[0], device=noise.device), cfg_scale)
    return ode_sample(guide, noise, tau)


@torch.no_grad()
def sample_reward(
    model: ToyDiT, prompts: list[str], seeds: int, shift: float, cfg_scale: float, noise_seed: int = 1234
) -> float:
    """Mean toy reward of ODE samples, `seeds` fixed noises per prompt."""
    batch = [p for p in prompts for _ in range(seeds)]
    noise = torch.randn(len(batch), *LATENT_SHAPE, generator=torch.Generator().manual_seed(noise_seed))
    x = guided_ode_sample(model, noise, encode_prompts(batch), shifted_linspace_grid(SAMPLING_STEPS, shift), cfg_scale)
    return toy_reward(decode(x), batch).mean().item()


def save_weights(model: ToyDiT, path: str, meta: dict) -> None:
    """Write the weights as float16 safetensors, metadata values as JSON except "format", atomically."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    metadata = {k: v if k == "format" else json.dumps(v) for k, v in meta.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def pretrain(config: PretrainConfig, model_cfg: ToyDiTConfig) -> tuple[ToyDiT, dict]:
    """Train from scratch; returns the model (weights rounded to their float16 storage) and its metadata."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = ToyDiT(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / config.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / config.steps))))
        ),
    )
    prompts = train_prompts()
    print(f"ToyDiT: {sum(p.numel() for p in model.parameters()):,} parameters, {len(prompts)} training prompts")
    start = time.time()
    for step in range(1, config.steps + 1):
        batch = [prompts[i] for i in torch.randint(len(prompts), (config.batch_size,), generator=gen).tolist()]
        x_clean = render(batch, gen)  # (B, C, H, W)
        cond = encode_prompts(batch)  # (B, L)
        drop = torch.rand(config.batch_size, generator=gen) < config.cond_dropout
        cond[drop] = null_cond(int(drop.sum()))
        eps = torch.randn(x_clean.shape, generator=gen)
        tau = torch.sigmoid(torch.randn(config.batch_size, generator=gen))  # logit-normal(0, 1)
        loss = rectified_flow_loss(model, x_clean, cond, eps, tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
            model.eval()
            r = sample_reward(model, eval_prompts(), config.eval_seeds, shift=1.0, cfg_scale=3.0)
            model.train()
            print(
                f"step {step:5d}  loss {loss.item():.4f}  eval reward (shift 1, config 3) {r:.3f}  "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    wall = time.time() - start
    model.eval()
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    sweep = {
        (s, g): sample_reward(model, prompts, config.eval_seeds, s, g, noise_seed=config.seed + 1)
        for s in SAMPLING_SHIFTS
        for g in SAMPLING_CFG_SCALES
    }
    shift, cfg_scale = max(sweep, key=sweep.get)
    meta = {
        "format": WEIGHTS_FORMAT,
        "config": dataclasses.asdict(model_cfg),
        "steps": config.steps,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "wall_seconds": round(wall, 1),
        "shift": shift,
        "cfg_scale": cfg_scale,
        "train_reward": sweep[(shift, cfg_scale)],
        "eval_reward": sample_reward(model, eval_prompts(), config.eval_seeds, shift, cfg_scale),
    }
    for (s, g), r in sweep.items():
        print(f"shift {s:g} config {g:g}: train-prompt reward {r:.3f}")
    print(
        f"recommended shift {shift:g}, config {cfg_scale:g}; eval-prompt reward {meta['eval_reward']:.3f}; "
        f"trained in {wall:.0f}s"
    )
    return model, meta


def main(argv=None) -> int:
    defaults = PretrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps")
    ap.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size, help="renders per step")
    ap.add_argument("--lr", type=float, default=defaults.lr, help="AdamW peak learning rate")
    ap.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    ap.add_argument("--eval-every", type=int, default=defaults.eval_every, help="steps between evaluations")
    args = ap.parse_args(argv)
    config = PretrainConfig(
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        eval_every=args.eval_every,
    )
    model, meta = pretrain(config, ToyDiTConfig())
    save_weights(model, args.out, meta)
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
