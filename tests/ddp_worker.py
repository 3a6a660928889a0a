"""Run by tests/test_ddp.py (toy) and tests/test_diffusers_models.py (argv[2]: a diffusers folder) under torchrun:
a tiny training run whose per-rank LoRA weights are dumped."""

import os
import sys

import torch
import torch.distributed as dist

from densegrpo_core.models.spec import ModelSpec
from densegrpo_core.rewards import get_reward
from densegrpo_core.training.trainer import TrainConfig, Trainer

out = sys.argv[1]
folder = sys.argv[2] if len(sys.argv) > 2 else None
dist.init_process_group("gloo")
torch.set_num_threads(1)
reward = "jpeg_incompressibility" if folder else "toy"
cfg = TrainConfig(
    out_dir=out,
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
    global_std=True,
    reward=reward,
    grad_checkpointing=folder is not None,
)
spec = (
    ModelSpec(model=folder, train_prompts=["a red cube", "a blue ball", "a green tree"], resolution=16)
    if folder
    else ModelSpec()
)
pipe, train_prompts, _ = spec.load("cpu")
trainer = Trainer(cfg, pipe, get_reward(reward), train_prompts)
trainer.run()
vec = torch.cat([p.detach().flatten() for p in trainer.params])
torch.save(
    {"lora": vec, "world": trainer.world, "nfe": [m["nfe"] for m in trainer.metrics]},
    os.path.join(os.path.dirname(out), f"rank{dist.get_rank()}.pt"),
)
dist.destroy_process_group()
