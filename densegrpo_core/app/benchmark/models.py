"""The networks the benchmark trains: the toy model, the core DiT at any size (random weights), and random
stand-ins of the real decoder (SD3's VAE) and reward (a ViT-H/14 tower); other networks join by `register_arch`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.pipeline import FlowPipeline, load_pipeline
from ...rewards import get_reward
from .config import ARCHS, BenchConfig, register_arch
from .dit import DiT, DiTConfig, LatentDecoder, RandomTextEncoder


# ----------------------------------------------------------------------------------- stand-ins
class StandInReward(nn.Module):
    """Stand-in for an image reward model: a random ViT image tower (ViT-H/14 at 224 px, PickScore's / HPSv2's,
    when full) and a float32 linear score. `(images (B, H, W, 3) in [0, 1], prompts) -> (B,)` float32."""

    def __init__(self, image_size: int, patch: int, layers: int, heads: int, hidden: int, mlp: int):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        self.image_size = image_size
        self.vit = VisionTransformer(image_size, patch, layers, heads, hidden, mlp)
        self.vit.heads = nn.Identity()
        self.head = nn.Linear(hidden, 1)

    @classmethod
    def full(cls) -> "StandInReward":
        return cls(224, 14, 32, 16, 1280, 5120)

    @classmethod
    def small(cls) -> "StandInReward":
        return cls(32, 8, 2, 2, 32, 64)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        dtype = self.vit.conv_proj.weight.dtype
        x = F.interpolate(
            images.movedim(-1, 1).float(),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )  # (B, 3, s, s)
        return self.head(self.vit(x.to(dtype)).float()).squeeze(-1)  # (B,)


def _stand_ins(full: bool, latent_channels: int):
    if full:
        return LatentDecoder(latent_channels), StandInReward.full()
    return LatentDecoder(latent_channels, channels=(16, 8), convs_per_level=1), StandInReward.small()


def dit_config(config: BenchConfig):
    width = config.width or 1536
    base = DiTConfig()
    small = width < 256
    return DiTConfig(
        latent_channels=config.latent_channels or base.latent_channels,
        latent_size=config.latent_size or base.latent_size,
        width=width,
        depth=config.depth or base.depth,
        heads=config.heads or max(1, width // 64),
        context_tokens=config.context_tokens or base.context_tokens,
        context_dim=16 if small else base.context_dim,
        pooled_dim=8 if small else base.pooled_dim,
        self_attn_layers=min(base.self_attn_layers, (config.depth or base.depth) // 2 + 1),
    )


def _with_default_dtype(dtype: torch.dtype, build):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build()
    finally:
        torch.set_default_dtype(old)


def full_stand_ins(config: BenchConfig, width: int) -> bool:
    """Whether the decoder and reward stand-ins are full-size (SD3 VAE, ViT-H/14) rather than small."""
    return config.stand_ins == "full" or (config.stand_ins == "auto" and width >= 1024)


def build_toy(config: BenchConfig, dtype: torch.dtype):
    """The shipped toy model with its own decoder and reward."""
    pipe, prompts, _ = load_pipeline("toy", config.device)
    pipe.model.to(dtype)
    return pipe, prompts, get_reward("toy")


def core_dit(config: BenchConfig, dit_cfg: DiTConfig, dtype: torch.dtype):
    """The core joint-attention DiT (dit.py) as (velocity model, LoRA module, its DiTConfig)."""
    return _with_default_dtype(dtype, lambda: DiT(dit_cfg)), None, dit_cfg


register_arch("toy", build_toy)
register_arch("dit", core_dit)


def build_pipeline(config: BenchConfig, arch: str):
    """(FlowPipeline, training prompts, reward) with fresh weights seeded by config.seed."""
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    torch.manual_seed(config.seed)
    if arch == "toy":
        return build_toy(config, dtype)
    with torch.device(config.device):
        model, lora_module, dcfg = ARCHS[arch](config, dit_config(config), dtype)
        decoder, reward = _stand_ins(full_stand_ins(config, dcfg.width), dcfg.latent_channels)
    decoder.to(dtype=dtype)
    reward.vit.to(dtype=dtype)
    encoder = RandomTextEncoder(dcfg, config.device)
    pipe = FlowPipeline(
        model=model,
        encode=encoder,
        null_cond=encoder.null,
        decode=decoder,
        latent_shape=dcfg.latent_shape,
        arch=getattr(model, "lora_preset", "mmdit"),
        default_shift=3.0,
        default_cfg=4.5,
        info={"name": arch},
        lora_module=lora_module,
        lora_prefix=getattr(model, "lora_prefix", "diffusion_model."),
    )
    return pipe, [f"bench prompt {i}" for i in range(64)], reward


def describe(config: BenchConfig, arch: str, width: int) -> str:
    """One line naming the model and the stand-ins of a bench result."""
    if arch == "toy":
        return "Toy DiT (shipped weights, toy decoder and reward)"
    model = {
        "dit": "Core DiT (bench/dit.py, random weights)",
        "mmdit": "ComfyUI MMDiT (SD3.5-M config, random weights)",
        "diffusers": "diffusers SD3Transformer2DModel (a local pipeline folder's weights)",
    }.get(arch, f"{arch} (random weights)")
    return f"{model}, {'full-size' if full_stand_ins(config, width) else 'small'} decoder/reward stand-ins"
