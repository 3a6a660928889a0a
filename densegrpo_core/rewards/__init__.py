"""Reward models: `(images (B, H, W, 3) float in [0, 1], prompts list[str]) -> tensor (B,)` float32.

`get_reward(spec, path)` builds a reward by name (`list_rewards()`: pickscore, pickscore_flowgrpo, hpsv2,
aesthetic, clipscore, jpeg_compressibility, jpeg_incompressibility, toy), as a user callable
"package.module:function", or as a weighted sum ({"pickscore": 1.0, "aesthetic": 0.5} or
"pickscore=1.0,aesthetic=0.5"). Model files come only from local paths; models are cached per process
until `release_rewards()`. Importing this package loads no model library (transformers, open_clip, PIL).

- `base`, `combine`, `cache`  the protocol, batching, weighted sums, the per-process model cache
- `calls`                     one checked, time-limited reward call (`call_reward`, `CheckedReward`): errors name
                              the reward and the call
- `registry`                  one spec record per built-in reward (the ComfyUI loader nodes are made from them)
- `pickscore`, `hpsv2`, `aesthetic`, `clipscore`, `jpeg`  the built-in reward models
- `hf_clip`, `clip_preprocess`, `model_files`  CLIP loading, preprocessing, reading model files (weights only)
- `custom_files`              user reward functions from local files

May import: models (the reward input contract and the toy model's reward) and util. Never resources, training,
jobs or app.
"""

from ..models.protocols import IMAGE_VALUE_TOLERANCE, check_reward_inputs
from .base import DEFAULT_BATCH_SIZE, BatchedReward, CallableReward, RewardModel, check_reward_output, load_callable
from .cache import release_rewards
from .calls import (
    CheckedReward,
    RewardCallError,
    RewardOutputError,
    RewardTimeoutError,
    call_reward,
    check_scores,
    reward_name,
)
from .combine import WeightedReward
from .model_files import COMFY_FOLDER
from .registry import REWARD_REGISTRY, RewardSpec, get_reward, list_rewards, parse_reward_paths, parse_reward_spec

__all__ = [
    "COMFY_FOLDER",
    "DEFAULT_BATCH_SIZE",
    "IMAGE_VALUE_TOLERANCE",
    "REWARD_REGISTRY",
    "BatchedReward",
    "CallableReward",
    "CheckedReward",
    "RewardCallError",
    "RewardModel",
    "RewardOutputError",
    "RewardSpec",
    "RewardTimeoutError",
    "WeightedReward",
    "call_reward",
    "check_reward_inputs",
    "check_reward_output",
    "check_scores",
    "get_reward",
    "list_rewards",
    "load_callable",
    "parse_reward_paths",
    "parse_reward_spec",
    "release_rewards",
    "reward_name",
]
