"""What every model-family test module does the same way: a two-iteration training config on tiny models, the
LoRA as one vector, one velocity evaluation, and a trained-then-perturbed LoRA exported in both layouts."""

import torch

from densegrpo_core.models import lora
from densegrpo_core.rewards import get_reward
from densegrpo_core.training.trainer import TrainConfig, Trainer


def train_config(out, **kw) -> TrainConfig:
    """Two iterations of 2 prompts × G = 2, T = 3, rank-2 LoRA on the JPEG reward: seconds on a tiny model."""
    base = dict(
        out_dir=str(out),
        steps=3,
        iterations=2,
        prompts_per_iteration=2,
        group_size=2,
        train_batch=2,
        lora_rank=2,
        lora_alpha=4,
        eval_every=0,
        save_every=0,
        lr=1e-2,
        reward="jpeg_incompressibility",
    )
    return TrainConfig(**{**base, **kw})


def lora_vector(model) -> torch.Tensor:
    """Every LoRA parameter of `model`, flattened into one vector."""
    return torch.cat([p.detach().flatten() for p in lora.lora_parameters(model)])


def velocity(pipe, noise: torch.Tensor, prompts=("a red cube",)) -> torch.Tensor:
    """The pipeline's velocity at t = 0.7 for `noise` (1, C, h, w) and the prompts."""
    with torch.no_grad():
        return pipe.model(noise, torch.tensor([0.7]), pipe.encode(list(prompts)))


def train_and_export(loaded, out):
    """One iteration on `loaded` = load_pipeline(...)'s (pipe, train prompts, eval prompts), then every LoRA
    parameter moved by 0.05·N(0, 1) (so a wrong scale or key shows) and exported to `out`/lora.safetensors with
    the diffusers layout beside it. Returns (trainer, out)."""
    pipe, train, _ = loaded
    t = Trainer(
        train_config(out, iterations=1, export_diffusers=True), pipe, get_reward("jpeg_incompressibility"), train
    )
    t.run()
    with torch.no_grad():
        for p in t.params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    t.export_lora(str(out / "lora.safetensors"))
    return t, out
