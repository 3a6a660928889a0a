"""A tiny DiT velocity model for the toy task, and its word-level tokenizer.

v = model(x, τ, c) is the rectified-flow velocity dx/dτ = ε - x_clean for x(τ) = (1-τ)·x_clean + τ·ε
(docs/method.md §1): τ = 1 is noise, τ = 0 the clean image. Architecture as DiT (Peebles & Xie 2023) at toy size:
patchify → transformer blocks with adaLN-Zero modulation by (time embedding + pooled prompt embedding) →
unpatchify. The linear layers `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2` and `adaLN_modulation` are the
LoRA targets of the "toy" preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .task import LATENT_SHAPE, WORDS

PAD_ID = 0  # padding, ignored by the prompt pooling
NULL_ID = 1  # the unconditional prompt of classifier-free guidance
VOCAB = ("<pad>", "<null>", *WORDS)
CONTEXT_LEN = 8  # tokens per prompt; toy prompts have 7 words
WEIGHTS_FORMAT = "densegrpo.toy/1"  # metadata "format" of the weights file


@dataclass
class ToyDiTConfig:
    image_size: int = LATENT_SHAPE[1]  # latent height = width (the latent is the 16x16 image)
    in_channels: int = LATENT_SHAPE[0]  # latent channels (RGB)
    patch_size: int = 2  # patch side: 16x16 → 8x8 = 64 tokens
    width: int = 96  # transformer hidden size D
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (head dim = width / heads)
    mlp_ratio: float = 4.0  # MLP hidden size = mlp_ratio · width
    vocab_size: int = len(VOCAB)  # prompt token ids, 0 = padding, 1 = null prompt
    context_len: int = CONTEXT_LEN  # prompt tokens L
    freq_dim: int = 256  # sinusoidal features of the flow time τ


def encode_prompts(prompts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Prompts → token ids (B, L) long, padded with 0; ValueError naming any word outside the vocabulary."""
    if isinstance(prompts, str):
        raise ValueError(f"prompts must be a list of strings, got the single string {prompts!r}")
    ids = torch.full((len(prompts), CONTEXT_LEN), PAD_ID, dtype=torch.long)  # (B, L)
    for i, prompt in enumerate(prompts):
        words = prompt.lower().split()
        if not words or len(words) > CONTEXT_LEN:
            raise ValueError(f"prompt {prompt!r} must have 1 to {CONTEXT_LEN} words, got {len(words)}")
        for j, word in enumerate(words):
            if word not in VOCAB[2:]:
                raise ValueError(f"unknown word {word!r} in prompt {prompt!r}; the toy vocabulary is {list(VOCAB[2:])}")
            ids[i, j] = VOCAB.index(word)
    return ids.to(device) if device is not None else ids


def null_cond(batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The unconditional prompt for classifier-free guidance: (B, L) long, the null token then padding."""
    ids = torch.full((batch, CONTEXT_LEN), PAD_ID, dtype=torch.long, device=device)  # (B, L)
    ids[:, 0] = NULL_ID
    return ids


def timestep_embedding(tau: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of τ ∈ [0, 1] (scaled by 1000 like DiT's integer timesteps): (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=tau.device) / half)
    args = 1000.0 * tau.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Self-attention + MLP, each pre-normed, shifted/scaled and gated by the conditioning (adaLN-Zero)."""

    def __init__(self, cfg: ToyDiTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(cfg.width, int(cfg.width * cfg.mlp_ratio))
        self.adaLN_modulation = nn.Linear(cfg.width, 6 * cfg.width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(F.silu(c)).chunk(6, dim=-1)  # (B, D) each
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, N, D)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, cfg: ToyDiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Linear(cfg.width, 2 * cfg.width)
        self.linear = nn.Linear(cfg.width, cfg.patch_size**2 * cfg.in_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(F.silu(c)).chunk(2, dim=-1)  # (B, D) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p·p·C)


class ToyDiT(nn.Module):
    """Velocity model `forward(x (B, 3, 16, 16), tau (B,), cond (B, L) long) -> v (B, 3, 16, 16)`."""

    def __init__(self, cfg: ToyDiTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size or cfg.width % cfg.heads:
            raise ValueError(f"image_size must be divisible by patch_size and width by heads, got {cfg}")
        self.cfg = cfg
        D, p = cfg.width, cfg.patch_size
        self.num_patches = (cfg.image_size // p) ** 2
        self.x_embedder = nn.Linear(p * p * cfg.in_channels, D)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, D) * 0.02)
        self.t_embedder = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.token_embed = nn.Embedding(cfg.vocab_size, D)
        self.token_pos = nn.Parameter(torch.randn(1, cfg.context_len, D) * 0.02)
        # Per-token nonlinearity before pooling: a mean of linear token features would ignore word order,
        # and "a red … on a blue background" must differ from "a blue … on a red background".
        self.prompt_mlp = nn.Sequential(nn.Linear(D, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        for module in [
            *(b.adaLN_modulation for b in self.blocks),
            self.final_layer.adaLN_modulation,
            self.final_layer.linear,
        ]:
            nn.init.zeros_(module.weight)  # adaLN-Zero: every block starts as the identity, the output at 0
            nn.init.zeros_(module.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.cfg.patch_size
        x = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, H/p, W/p, p, p, C)
        return x.reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, p·p·C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, C, p = x.shape[0], self.cfg.in_channels, self.cfg.patch_size
        g = self.cfg.image_size // p
        x = x.view(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, H/p, p, W/p, p)
        return x.reshape(B, C, g * p, g * p)  # (B, C, H, W)

    def embed_prompt(self, cond: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) → pooled prompt embedding (B, D), mean over the non-padding tokens."""
        h = self.prompt_mlp(self.token_embed(cond) + self.token_pos[:, : cond.shape[1]])  # (B, L, D)
        keep = (cond != PAD_ID).unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        expected = (self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)
        if tuple(x.shape[1:]) != expected or tau.shape != (B,) or cond.shape[0] != B:
            raise ValueError(
                f"ToyDiT expects x (B, {', '.join(map(str, expected))}), tau (B,), cond (B, L); "
                f"got x {tuple(x.shape)}, tau {tuple(tau.shape)}, cond {tuple(cond.shape)}"
            )
        h = self.x_embedder(self.patchify(x)) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(timestep_embedding(tau, self.cfg.freq_dim).to(h.dtype)) + self.embed_prompt(cond)  # (B, D)
        for block in self.blocks:
            h = block(h, c)  # (B, N, D)
        return self.unpatchify(self.final_layer(h, c))  # (B, C, H, W)
