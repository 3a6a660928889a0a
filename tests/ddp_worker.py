"""Run by tests/test_ddp.py under torchrun: a tiny training run whose per-rank LoRA weights are dumped."""
import os
import sys

import torch
import torch.distributed as dist

from densegrpo_core.pipeline import load_pipeline
from densegrpo_core.rewards import get_reward
from densegrpo_core.trainer import TrainConfig, Trainer

out = sys.argv[1]
dist.init_process_group("gloo")
torch.set_num_threads(1)
cfg = TrainConfig(out_dir=out, steps=3, iterations=2, prompts_per_iteration=2, group_size=2, train_batch=2,
                  lora_rank=2, lora_alpha=4, eval_every=0, save_every=0, lr=1e-2, global_std=True)
pipe, train_prompts, _ = load_pipeline("toy")
trainer = Trainer(cfg, pipe, get_reward("toy"), train_prompts)
trainer.run()
vec = torch.cat([p.detach().flatten() for p in trainer.params])
torch.save({"lora": vec, "world": trainer.world, "nfe": [m["nfe"] for m in trainer.metrics]},
           os.path.join(os.path.dirname(out), f"rank{dist.get_rank()}.pt"))
dist.destroy_process_group()
