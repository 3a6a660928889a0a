"""The benchmark's settings: one dataclass, a comment per field, and the tiny smoke-run preset."""

from __future__ import annotations

from dataclasses import dataclass

from ...method.advantages import ADVANTAGE_MODES

STAGES = ("rollout", "reward", "update")
# arch name → network builder (models.py fills it with "toy" and "dit"; `register_arch` adds more):
# "toy" → build(config, dtype) → (pipe, prompts, reward); others → build(config, dit_config, dtype) →
# (velocity model, LoRA module or None, the DiTConfig of its sizes)
ARCHS: dict = {}


def register_arch(name: str, builder) -> None:
    """Add a network to the bench (e.g. bench/comfy_mmdit.py: ComfyUI's own MMDiT, which the core cannot import)."""
    ARCHS[name] = builder


@dataclass
class BenchConfig:
    out: str = "bench_out"  # folder for bench.json and bench.md
    arch: str = "toy"  # toy | dit (core DiT, random weights) | any name added by register_arch
    # (bench/comfy_mmdit.py adds ComfyUI's MMDiT as "mmdit")
    width: int | None = None  # DiT hidden size (None: SD3.5-M's 1536; mmdit: 64·depth, fixed by ComfyUI)
    depth: int | None = None  # DiT blocks (None: 24)
    heads: int | None = None  # attention heads (None: width / 64)
    latent_size: int | None = None  # latent side (None: 64, i.e. 512 px)
    latent_channels: int | None = None  # latent channels (None: 16)
    context_tokens: int | None = None  # text tokens (None: 154)
    steps: int = 10  # T
    group_sizes: tuple[int, ...] = (8,)  # G values to run
    prompts: int = 4  # prompts per iteration (B = prompts · G)
    modes: tuple[str, ...] | None = None  # None: all four for toy, flow_grpo and dense_grpo otherwise
    grad_checkpointing: tuple[bool, ...] = (False,)  # settings to run
    max_batch: int = 256  # rows per rollout forward call
    train_batch: int = 8  # trajectories per update minibatch
    lora_rank: int = 32  # LoRA r (α = 2r)
    uncond_grad: bool = False  # backpropagate through CFG's unconditional pass too (default: detached)
    dtype: str = "float32"  # float32 | bfloat16 (weights cast to bf16 and autocast, like ComfyUI's models)
    device: str = "cpu"
    iterations: int = 3  # timed iterations per run, after one warm-up
    memory: bool = True  # peak memory per stage (CPU: one extra profiled iteration per run)
    compare_naive: bool | None = None  # also time fused vs naive rollouts (None: toy only)
    stand_ins: str = "auto"  # decoder/reward stand-ins: full (SD3 VAE, ViT-H sized) | small | auto (width)
    fit_constants: bool = False  # refit estimate.py's constants for this device kind and write them there
    budget_s: float | None = None  # skip the remaining runs once the projected total would exceed this
    seed: int = 0  # random weights, prompts and noise

    def __post_init__(self):
        self.group_sizes = tuple(int(g) for g in self.group_sizes)
        self.grad_checkpointing = tuple(bool(c) for c in self.grad_checkpointing)
        if self.arch not in ARCHS:
            raise ValueError(
                f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r} (ComfyUI's MMDiT: "
                f"bench/comfy_mmdit.py registers it)"
            )
        if self.modes is not None:
            unknown = [m for m in self.modes if m not in ADVANTAGE_MODES]
            if unknown:
                raise ValueError(f"unknown modes {unknown}; expected some of {', '.join(ADVANTAGE_MODES)}")
        if not self.group_sizes or min(self.group_sizes) < 2:
            raise ValueError(f"group sizes must be >= 2, got {self.group_sizes}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


def tiny_config(out: str, device: str = "cpu") -> BenchConfig:
    """A seconds-long smoke run of the whole bench (tests, and a check before a GPU run)."""
    return BenchConfig(
        out=out,
        arch="dit",
        width=32,
        depth=2,
        heads=2,
        latent_size=8,
        latent_channels=4,
        context_tokens=4,
        steps=3,
        group_sizes=(2,),
        prompts=1,
        grad_checkpointing=(False, True),
        max_batch=8,
        train_batch=2,
        lora_rank=4,
        device=device,
        iterations=1,
    )
