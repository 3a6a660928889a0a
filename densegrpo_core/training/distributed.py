"""Helpers for one process or several under `torchrun` (docs/method.md §7): rank and world size, gathering
rewards and latents, agreeing on a count, and averaging LoRA gradients (DDP by hand, rank 0 writes files).

With one process every helper is the identity and touches no `torch.distributed` call.
"""

from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is initialized."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather(t: torch.Tensor, world: int, device: torch.device) -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0, rank-major, on the CPU (`t` itself with one process)."""
    if world == 1:
        return t
    t = t.to(device).contiguous()
    out = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(out, t)
    return torch.cat(out).cpu()


def gather_objects(obj, world: int) -> list:
    """Every rank's picklable `obj`, in rank order ([obj] with one process)."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def max_over_ranks(n: int, world: int, device: torch.device) -> int:
    """The largest `n` of all ranks."""
    if world == 1:
        return n
    t = torch.tensor([n], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def average_gradients(params, world: int) -> None:
    """All-reduce the gradients of `params` to their mean over ranks (a missing gradient counts as zero)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= world
