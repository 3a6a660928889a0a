"""A generic joint-attention DiT (the MMDiT of SD3 / SD3.5) at any width and depth, with random weights, plus
stand-ins for the text encoder and the VAE decoder: a real-architecture model for memory and speed figures.

v = model(x, τ, cond) is the rectified-flow velocity (docs/method.md §1), as ComfyUI's SD3 models give it.
The defaults are SD3.5-Medium's dimensions: hidden 1536, 24 joint blocks, 24 heads (head dim 64), patch 2,
16 latent channels, text context 154 tokens × 4096 features, pooled text 2048 features, RMS q/k norm, and
an extra image self-attention in the first 13 blocks (MMDiT-X); at 512 px the latent is 64×64 → 1024 image
tokens. Module names follow ComfyUI's `comfy/ldm/modules/diffusionmodules/mmdit.py`
(`joint_blocks.N.{x_block,context_block}.{attn,attn2,mlp,adaLN_modulation}`), so the "mmdit" LoRA preset
adapts the same layers here as in the real model and `enable_gradient_checkpointing` finds `joint_blocks`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.toy.model import (  # MLP: fc1 → GELU(tanh) → fc2 (LoRA preset names)
    MLP,
    modulate,
    timestep_embedding,
)


@dataclass
class DiTConfig:
    latent_channels: int = 16  # C of the latent (SD3's VAE: 16)
    latent_size: int = 64  # latent height = width (512 px / 8)
    patch_size: int = 2  # patch side: 64×64 latent → 32×32 = 1024 image tokens
    width: int = 1536  # hidden size D (SD3.5-M: 64 · depth)
    depth: int = 24  # joint blocks
    heads: int = 24  # attention heads (head dim = width / heads)
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio · width
    context_dim: int = 4096  # features of a text token (T5-XXL; CLIP features padded to it)
    context_tokens: int = 154  # text tokens per prompt (77 CLIP + 77 T5)
    pooled_dim: int = 2048  # pooled text features (CLIP-L 768 + CLIP-G 1280)
    self_attn_layers: int = 13  # the first N blocks add an image-only self-attention (SD3.5-M's MMDiT-X)
    qk_norm: bool = True  # RMSNorm on queries and keys per head (SD3.5)
    freq_dim: int = 256  # sinusoidal features of the flow time τ

    def __post_init__(self):
        if self.latent_size % self.patch_size or self.width % self.heads:
            raise ValueError(f"latent_size must be divisible by patch_size and width by heads, got {self}")

    @property
    def tokens(self) -> int:
        """Image tokens per latent."""
        return (self.latent_size // self.patch_size) ** 2

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)


def sd35_medium(latent_size: int = 64) -> DiTConfig:
    """SD3.5-Medium's dimensions (512 px → latent 64)."""
    return DiTConfig(latent_size=latent_size)


def tiny_dit(latent_size: int = 8) -> DiTConfig:
    """A few-hundred-thousand-parameter DiT of the same structure, for tests and smoke runs."""
    return DiTConfig(
        latent_channels=4,
        latent_size=latent_size,
        width=32,
        depth=2,
        heads=2,
        context_dim=16,
        context_tokens=4,
        pooled_dim=8,
        self_attn_layers=1,
    )


class SelfAttentionParts(nn.Module):
    """qkv projection (with optional RMS q/k norm) and output projection of one stream (ComfyUI's SelfAttention)."""

    def __init__(self, width: int, heads: int, qk_norm: bool, pre_only: bool = False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.ln_q = nn.RMSNorm(width // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.ln_k = nn.RMSNorm(width // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = None if pre_only else nn.Linear(width, width)

    def pre_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        return self.ln_q(q), self.ln_k(k), v

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Plain self-attention over this stream only: (B, N, D) → (B, N, D)."""
        out = F.scaled_dot_product_attention(*self.pre_attention(x))  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).flatten(2))


class StreamBlock(nn.Module):
    """One stream (image or text) of a joint block: adaLN-modulated attention inputs, then the residual
    attention and MLP updates (ComfyUI's DismantledBlock). `pre_only`: the last text block only feeds q, k, v."""

    def __init__(self, config: DiTConfig, pre_only: bool = False, self_attn: bool = False):
        super().__init__()
        D = config.width
        self.pre_only, self.self_attn = pre_only, self_attn
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttentionParts(D, config.heads, config.qk_norm, pre_only)
        self.attn2 = SelfAttentionParts(D, config.heads, config.qk_norm) if self_attn else None
        if not pre_only:
            self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
            self.mlp = MLP(D, int(D * config.mlp_ratio))
        n_mod = 2 if pre_only else (9 if self_attn else 6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, n_mod * D))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        """(q, k, v) of this stream (B, h, N, d) each, and what `post_attention` needs: the modulation (B, D)
        chunks and, with `self_attn`, the image-only attention output (B, N, D)."""
        mods = self.adaLN_modulation(c).chunk(2 if self.pre_only else (9 if self.self_attn else 6), dim=-1)
        normed = self.norm1(x)  # (B, N, D)
        qkv = self.attn.pre_attention(modulate(normed, mods[0], mods[1]))
        attn2 = self.attn2.attend(modulate(normed, mods[6], mods[7])) if self.attn2 is not None else None
        return qkv, (mods, attn2)

    def post_attention(self, attn: torch.Tensor, x: torch.Tensor, saved) -> torch.Tensor:
        """attn (B, N, D) from the joint attention → the updated stream (B, N, D)."""
        mods, attn2 = saved
        x = x + mods[2].unsqueeze(1) * self.attn.proj(attn)
        if attn2 is not None:
            x = x + mods[8].unsqueeze(1) * attn2
        return x + mods[5].unsqueeze(1) * self.mlp(modulate(self.norm2(x), mods[3], mods[4]))


class JointBlock(nn.Module):
    """Text and image streams with their own weights, one attention over the concatenated tokens (SD3 MMDiT).

    `forward(context (B, L, D), x (B, N, D), c (B, D)) -> (context, x)`, ComfyUI's argument order."""

    def __init__(self, config: DiTConfig, last: bool, self_attn: bool):
        super().__init__()
        self.context_block = StreamBlock(config, pre_only=last)
        self.x_block = StreamBlock(config, self_attn=self_attn)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
        L = context.shape[1]
        (cq, ck, cv), c_mods = self.context_block.pre_attention(context, c)
        (xq, xk, xv), x_mods = self.x_block.pre_attention(x, c)
        out = F.scaled_dot_product_attention(
            torch.cat([cq, xq], 2), torch.cat([ck, xk], 2), torch.cat([cv, xv], 2)
        )  # (B, h, L+N, d)
        out = out.transpose(1, 2).flatten(2)  # (B, L+N, D)
        x = self.x_block.post_attention(out[:, L:], x, x_mods)  # (B, N, D)
        if self.context_block.pre_only:  # the last block: text is done
            return None, x
        return self.context_block.post_attention(out[:, :L], context, c_mods), x


class FinalLayer(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(config.width, config.patch_size**2 * config.latent_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 2 * config.width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (B, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p·p·C)


class Embedder(nn.Module):
    """Linear → SiLU → Linear, as `mlp` (ComfyUI's TimestepEmbedder / VectorEmbedder)."""

    def __init__(self, features: int, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PatchEmbed(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.latent_channels, config.width, config.patch_size, stride=config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class DiT(nn.Module):
    """Velocity model `forward(x (B, C, H, W), tau (B,), cond {"context": (B, L, ctx), "y": (B, pooled)}) -> v`."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.cfg = config
        self.hidden_size, self.patch_size = config.width, config.patch_size  # the names ComfyUI's MMDiT uses
        self.x_embedder = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens, config.width))
        self.t_embedder = Embedder(config.freq_dim, config.width)
        self.y_embedder = Embedder(config.pooled_dim, config.width)
        self.context_embedder = nn.Linear(config.context_dim, config.width)
        self.joint_blocks = nn.ModuleList(
            [
                JointBlock(config, last=i == config.depth - 1, self_attn=i < config.self_attn_layers)
                for i in range(config.depth)
            ]
        )
        self.final_layer = FinalLayer(config)
        self.init_random()

    @torch.no_grad()
    def init_random(self, std: float = 0.02) -> None:
        """Random weights of a trained model's scale: normal(0, std) matrices, zero biases, unit norms."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "ln_q" in name or "ln_k" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, C, p = x.shape[0], self.cfg.latent_channels, self.cfg.patch_size
        g = self.cfg.latent_size // p
        x = x.view(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, H/p, p, W/p, p)
        return x.reshape(B, C, g * p, g * p)  # (B, C, H, W)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: dict) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.cfg.latent_shape or tau.shape != (x.shape[0],):
            raise ValueError(
                f"DiT expects x (B, {', '.join(map(str, self.cfg.latent_shape))}) and tau (B,), "
                f"got x {tuple(x.shape)}, tau {tuple(tau.shape)}"
            )
        h = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(timestep_embedding(tau, self.cfg.freq_dim).to(h.dtype)) + self.y_embedder(
            cond["y"].to(h.dtype)
        )  # (B, D)
        context = self.context_embedder(cond["context"].to(h.dtype))  # (B, L, D)
        for block in self.joint_blocks:
            context, h = block(context, h, c)  # (B, L, D), (B, N, D)
        return self.unpatchify(self.final_layer(h, c))  # (B, C, H, W)


class RandomTextEncoder:
    """Stand-in for the text encoders: a fixed random context and pooled vector per prompt (seeded by its
    text), so equal prompts get equal conditioning. `null` gives the unconditional (zero) conditioning."""

    def __init__(self, config: DiTConfig, device: torch.device | str = "cpu"):
        self.cfg, self.device = config, torch.device(device)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self.cache:
            g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            self.cache[prompt] = (
                torch.randn(self.cfg.context_tokens, self.cfg.context_dim, generator=g),
                torch.randn(self.cfg.pooled_dim, generator=g),
            )
        return self.cache[prompt]

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        pairs = [self._one(p) for p in prompts]
        return {
            "context": torch.stack([c for c, _ in pairs]).to(self.device),  # (B, L, ctx)
            "y": torch.stack([y for _, y in pairs]).to(self.device),
        }  # (B, pooled)

    def null(self, batch: int) -> dict[str, torch.Tensor]:
        return {
            "context": torch.zeros(batch, self.cfg.context_tokens, self.cfg.context_dim, device=self.device),
            "y": torch.zeros(batch, self.cfg.pooled_dim, device=self.device),
        }


class LatentDecoder(nn.Module):
    """Stand-in for a VAE decoder with random weights: latents (N, C, h, w) → images (N, 8h, 8w, 3) in [0, 1].

    `channels` run from the latent resolution to the pixel resolution, one ×2 upsampling between levels
    (SD3's VAE decoder: 512, 512, 256, 128 with 6 convolutions per level, about its cost and activation size).
    """

    def __init__(
        self, latent_channels: int = 16, channels: tuple[int, ...] = (512, 512, 256, 128), convs_per_level: int = 6
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, ch in enumerate(channels):
            layers = [m for _ in range(convs_per_level) for m in (nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU())]
            if i + 1 < len(channels):
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, channels[i + 1], 3, padding=1)]
            self.levels.append(nn.Sequential(*layers))
        self.conv_out = nn.Conv2d(channels[-1], 3, 3, padding=1)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        p = self.conv_out.weight
        h = self.conv_in(latents.to(p.device, p.dtype))  # (N, ch0, h, w)
        for level in self.levels:
            h = level(h)
        return torch.sigmoid(self.conv_out(h).float()).movedim(1, -1)  # (N, H, W, 3)
