"""Training: the configuration dataclass and the GRPO trainer loop (docs/method.md §5-§7).

- `config`  TrainConfig, every hyperparameter with one comment each, and the batch arithmetic
- `trainer` the loop: rollout → rewards → advantages → PPO update, read top to bottom
- `checkpoint` the atomic checkpoint folder and resume
- `export` the LoRA file and its metadata
- `distributed` rank/world, gathers and gradient averaging under `torchrun`
- `ema` the EMA of the LoRA weights
- `optimizer` the optimizer factory

May import: method, models, rewards, resources, util. Never jobs or app.
"""
