"""What the trainer needs from a text-to-image flow model, and the reward of every rollout endpoint (docs/method.md §5).

A FlowPipeline bundles the three protocols of docs/architecture.md (VelocityModel, Decoder, and the prompt
encoder that makes its conditioning). The toy model, a ComfyUI MODEL (through the bridge) or any script's
torch module can fill it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..method.advantages import check_rewards, dense_rewards
from ..method.guidance import Cond, GuidedVelocity
from ..method.rollout import Rollout, fused_rollout, ode_sample
from ..method.schedule import flow_grid, sde_noise_scales


@dataclass
class FlowPipeline:
    model: torch.nn.Module  # VelocityModel: v = model(x, tau (N,), cond)
    encode: Callable[[list[str]], Cond]  # prompts → conditioning (B, ...)
    null_cond: Callable[[int], Cond] | None  # batch size → unconditional conditioning, for CFG
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents (N, C, H, W) → images (N, H, W, 3) in [0, 1]
    latent_shape: tuple[int, ...]  # (C, H, W) of one latent
    arch: str = "auto"  # LoRA target preset (see lora.py)
    default_shift: float = 3.0  # grid shift the model was trained for
    default_cfg: float = 4.5  # CFG scale that suits it
    info: dict = field(default_factory=dict)  # provenance shown in logs and LoRA metadata
    lora_module: torch.nn.Module | None = None  # the diffusion network inside `model` that gets the
    # LoRA (its module names are the file's keys); None = model
    lora_prefix: str = "diffusion_model."  # key prefix of the LoRA file: ComfyUI's for ComfyUI/toy
    # models, "transformer." for diffusers transformers
    block_lists: str | tuple[str, ...] = "auto"  # ModuleLists of blocks in lora_module to checkpoint
    # ("auto": those `resources.memory.find_block_lists` finds by the families' names)

    def guide(
        self,
        prompts: Sequence[str],
        cfg_scale: float,
        max_batch: int = 256,
        device: torch.device | str = "cpu",
        detach_uncond: bool = True,
    ) -> GuidedVelocity:
        """The guided velocity for one trajectory per prompt (repeat prompts for groups)."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts must not be empty")
        cond = _to(self.encode(prompts), device)
        uncond = _to(self.null_cond(len(prompts)), device) if self.null_cond and cfg_scale != 1.0 else None
        return GuidedVelocity(self.model, cond, uncond, cfg_scale, max_batch, detach_uncond=detach_uncond)


def _to(cond: Cond, device) -> Cond:
    if isinstance(cond, torch.Tensor):
        return cond.to(device)
    if isinstance(cond, dict):
        return {k: _to(v, device) for k, v in cond.items()}
    return cond


@torch.no_grad()
def score_latents(latents: torch.Tensor, prompts: Sequence[str], decode, reward, max_batch: int = 64) -> torch.Tensor:
    """r(decode(x), c) for latents (N, ...) with one prompt each, batched: → (N,) float32."""
    out = []
    for i in range(0, latents.shape[0], max_batch):
        images = decode(latents[i : i + max_batch]).float()
        out.append(torch.as_tensor(reward(images, list(prompts[i : i + max_batch]))).float().flatten().cpu())
    return torch.cat(out)


@torch.no_grad()
def score_images(images: torch.Tensor, prompts: Sequence[str], reward, max_batch: int = 64) -> torch.Tensor:
    """r(image, c) for images (N, H, W, 3) in [0, 1] with one prompt each, batched: → (N,) float32."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"prompts must give one prompt per image ({images.shape[0]}), got {len(prompts)}")
    return score_latents(images, prompts, lambda x: x, reward, max_batch)


@torch.no_grad()
def latent_rewards(ro: Rollout, prompts: Sequence[str], decode, reward, max_batch: int = 64) -> torch.Tensor:
    """R_t = r(decode(ODE_t(x_t)), c) for t = T … 1 and R_0 = r(decode(x_0), c) (docs/method.md §5).

    → R (B, T+1) float32 in grid order (column 0 = R_T, column T = R_0).
    """
    if len(prompts) != ro.batch:
        raise ValueError(f"prompts must give one prompt per trajectory ({ro.batch}), got {len(prompts)}")
    ends = ro.reward_latents()  # (B, T+1, ...)
    B, K = ends.shape[:2]
    flat_prompts = [p for p in prompts for _ in range(K)]  # row-major over (B, K)
    R = score_latents(ends.reshape(B * K, *ends.shape[2:]), flat_prompts, decode, reward, max_batch)
    return check_rewards(R.reshape(B, K), "latent rewards")


@torch.no_grad()
def evaluate_ode(
    pipe: FlowPipeline,
    reward,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    steps: int = 10,
    shift: float | None = None,
    tau: torch.Tensor | None = None,
    cfg_scale: float | None = None,
    device="cpu",
    max_batch: int = 256,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Mean reward of plain ODE samples (the evaluation sampler) for every prompt × seed, on the grid `tau`
    (default: the SD3 scheduler grid of `steps` steps at `shift`)."""
    prompts = [p for p in prompts for _ in seeds]
    noise = torch.cat(
        [
            torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(s))
            for _ in range(len(prompts) // len(seeds))
            for s in seeds
        ]
    ).to(device)
    if tau is None:
        tau = flow_grid(steps, pipe.default_shift if shift is None else shift)
    guide = pipe.guide(prompts, pipe.default_cfg if cfg_scale is None else cfg_scale, max_batch, device)
    with torch.autocast(
        torch.device(device).type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        x0 = ode_sample(guide, noise, tau)
    scores = score_latents(x0.float(), prompts, pipe.decode, reward)
    return {
        "reward_mean": scores.mean().item(),
        "reward_std": scores.std(unbiased=False).item(),
        "n": len(prompts),
        "latents": x0.float().cpu(),
        "scores": scores,
    }


def load_pipeline(
    name: str = "toy",
    device="cpu",
    *,
    train_prompts: Sequence[str] | None = None,
    eval_prompts: Sequence[str] | None = None,
    **options,
) -> tuple[FlowPipeline, list[str], list[str]]:
    """A pipeline by name with its training and evaluation prompts: "toy" (the shipped tiny DiT, its own prompts
    unless given) or the path of a diffusers pipeline folder (`diffusers_models`; `options` are
    its loader's: height, width, dtype, transformer_file, negative_prompt, guidance, max_sequence_length)."""
    if name == "toy":
        if options:
            raise ValueError(f"the toy model takes no model options, got {sorted(options)}")
        from .toy import load_toy

        toy = load_toy(device=device)
        pipe = FlowPipeline(
            model=toy.model,
            encode=toy.encode,
            null_cond=toy.null_cond,
            decode=toy.decode,
            latent_shape=tuple(toy.latent_shape),
            arch="toy",
            default_shift=toy.shift,
            default_cfg=toy.cfg_scale,
            info={"name": "toy"},
        )
        return (
            pipe,
            list(toy.train_prompts if train_prompts is None else train_prompts),
            list(toy.eval_prompts if eval_prompts is None else eval_prompts),
        )
    if not os.path.exists(name):
        raise ValueError(f"unknown model {name!r}: neither 'toy' nor an existing diffusers pipeline folder")
    from .diffusers_pipeline import load_diffusers_pipeline

    train, evals = list(train_prompts or []), list(eval_prompts or [])
    pipe = FlowPipeline(**load_diffusers_pipeline(name, device, prompts=train + evals, **options))
    return pipe, train, evals


BatchRewards = Callable[[list, torch.Tensor, torch.Generator], torch.Tensor]  # (prompts, ψ (T,), gen) → R (B, T+1)


def fused_rollout_rewards(
    pipe: FlowPipeline, reward, tau: torch.Tensor, *, cfg_scale: float, device="cpu", max_batch: int = 256
) -> BatchRewards:
    """`(prompts, psi, gen) -> R (B, T+1)`: one fused rollout of the prompts from noise of `gen`, then R_t (§5)."""

    def batch_rewards(batch: list, psi: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x_T = torch.randn((len(batch), *pipe.latent_shape), generator=gen).to(device)
        ro = fused_rollout(
            pipe.guide(batch, cfg_scale, max_batch, device), x_T, tau, sde_noise_scales(psi, tau), generator=gen
        )
        return latent_rewards(ro, batch, pipe.decode, reward)

    return batch_rewards


def dense_reward_sampler(
    batch_rewards: BatchRewards, prompts: Sequence[str], *, prompts_per_iteration: int, group_size: int, seed: int = 0
):
    """Closure `(psi (T,), iteration) -> ΔR (N, T)` for calibration (docs/method.md §8): every iteration draws
    `prompts_per_iteration` distinct prompts, G samples each, and scores them with `batch_rewards`
    (`fused_rollout_rewards` headless; the ComfyUI node runs the rollouts inside ComfyUI's sampling)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = list(dict.fromkeys(prompts))
    if prompts_per_iteration > len(prompts):
        raise ValueError(
            f"prompts_per_iteration ({prompts_per_iteration}) exceeds the {len(prompts)} distinct "
            f"prompts: an iteration draws its prompts without replacement"
        )

    def sample(psi: torch.Tensor, iteration: int) -> torch.Tensor:
        idx = torch.randperm(len(prompts), generator=gen)[:prompts_per_iteration].tolist()
        batch = [prompts[i] for i in idx for _ in range(group_size)]
        return dense_rewards(batch_rewards(batch, psi, gen))

    return sample
