"""Helpers for one process or several under `torchrun` (docs/method.md §7, docs/robustness.md): rank and world
size, gathering rewards and latents, agreeing on a count or a stop, and averaging LoRA gradients (DDP by hand,
rank 0 writes files).

With one process every helper is the identity and touches no `torch.distributed` call.

Every collective is bounded by the process group's timeout (`init_process_group(timeout_s=…)`, the run's
`dist_timeout_s`). Before each one a rank records in the process group's key-value store which collective it
is entering (`densegrpo/at/<rank>`), so a rank whose collective fails or times out names the ranks that never
arrived and what they were last doing (RankTimeout) instead of a bare transport error. A daemon thread of
each rank also stamps `densegrpo/alive/<rank>` every HEARTBEAT_S seconds: a frozen process (SIGSTOP stops
all its threads) stops stamping, which names it even when it froze inside a collective.
"""

from __future__ import annotations

import datetime
import json
import threading
import time

import torch

STORE_PREFIX = "densegrpo/at/"
ALIVE_PREFIX = "densegrpo/alive/"
HEARTBEAT_S = 1.0  # a rank silent for 5 of these is reported as not responding
_state = {"seq": 0, "timeout_s": None}  # this process's collective count and the group's timeout


class RankTimeout(RuntimeError):
    """A collective failed or timed out; the message names the ranks that did not arrive."""


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is initialized."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_process_group(backend: str, timeout_s: float | None = None) -> None:
    """torch.distributed.init_process_group(backend) from torchrun's environment, every collective bounded by
    `timeout_s` seconds (None: torch's default)."""
    kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=float(timeout_s))}
    torch.distributed.init_process_group(backend, **kwargs)
    _state.update(seq=0, timeout_s=timeout_s)
    _mark("start")
    store = _store()
    if store is not None:
        key = f"{ALIVE_PREFIX}{torch.distributed.get_rank()}"

        def beat():
            while True:
                try:
                    store.set(key, str(time.time()))
                except Exception:  # noqa: BLE001 - the store is gone: the run is ending
                    return
                time.sleep(HEARTBEAT_S)

        threading.Thread(target=beat, name="densegrpo-heartbeat", daemon=True).start()


def _store():
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private API: without it ranks are not named
        return None


def _mark(what: str) -> None:
    """Record in the store that this rank enters collective number seq, `what`."""
    store = _store()
    if store is None:
        return
    rank = torch.distributed.get_rank()
    try:
        store.set(f"{STORE_PREFIX}{rank}", json.dumps({"seq": _state["seq"], "what": what, "t": time.time()}))
    except Exception:  # noqa: BLE001 - the marks only improve a message
        pass


def _read(store, key: str):
    try:
        if store is not None and store.check([key]):
            return store.get(key).decode()
    except Exception:  # noqa: BLE001 - the store may be gone too
        pass
    return None


def _laggards(seq: int, world: int) -> list[str]:
    """A description of every other rank that had not reached collective `seq` or stopped stamping its
    heartbeat: 'rank 1 (at 'gather rewards (iteration 3)' since 12 s, silent for 11 s)'."""
    store, out, now = _store(), [], time.time()
    me = torch.distributed.get_rank()
    for r in range(world):
        if r == me:
            continue
        mark = _read(store, f"{STORE_PREFIX}{r}")
        mark = json.loads(mark) if mark else None
        alive = _read(store, f"{ALIVE_PREFIX}{r}")
        silent = now - float(alive) if alive else None
        behind = mark is None or mark.get("seq", -1) < seq
        if behind or (silent is not None and silent > 5 * HEARTBEAT_S):
            facts = [f"last at '{mark['what']}' {now - mark['t']:.0f} s ago" if mark else "no collective recorded"]
            if silent is not None:
                facts.append(f"not responding for {silent:.0f} s" if silent > 5 * HEARTBEAT_S else "responding")
            out.append(f"rank {r} ({', '.join(facts)})")
    return out


def _collective(what: str, world: int, fn, *args):
    """Run the collective `fn(*args)`; on a failure raise RankTimeout naming the ranks that did not arrive."""
    _state["seq"] += 1
    seq = _state["seq"]
    _mark(what)
    t0 = time.monotonic()
    try:
        return fn(*args)
    except RuntimeError as e:
        if isinstance(e, RankTimeout):
            raise
        raise RankTimeout(_describe_failure(what, seq, world, e, time.monotonic() - t0)) from e


def _describe_failure(what: str, seq: int, world: int, error: BaseException, waited: float) -> str:
    rank = torch.distributed.get_rank()
    limit = _state["timeout_s"]
    within = f" (waited {waited:.0f} s" + (f"; dist_timeout_s = {limit:g} s)" if limit is not None else ")")
    late = _laggards(seq, world)
    if not late:
        return f"rank {rank}: the collective '{what}' failed ({error}); every rank had reached it and responds"
    return (
        f"rank {rank}: {', '.join(late)} did not complete '{what}'{within}. A rank not responding is frozen "
        f"(e.g. SIGSTOP) or hung; one that responds is much slower than the others (raise dist_timeout_s, "
        f"--dist-timeout-s). The last checkpoint is intact: resume from it"
    )


def gather(t: torch.Tensor, world: int, device: torch.device, what: str = "gather") -> torch.Tensor:
    """Every rank's `t` concatenated along dim 0, rank-major, on the CPU (`t` itself with one process)."""
    if world == 1:
        return t
    t = t.to(device).contiguous()
    out = [torch.empty_like(t) for _ in range(world)]
    _collective(what, world, torch.distributed.all_gather, out, t)
    return torch.cat(out).cpu()


def gather_objects(obj, world: int, what: str = "gather objects") -> list:
    """Every rank's picklable `obj`, in rank order ([obj] with one process)."""
    if world == 1:
        return [obj]
    gathered = [None] * world
    _collective(what, world, torch.distributed.all_gather_object, gathered, obj)
    return gathered


def max_over_ranks(n: int, world: int, device: torch.device, what: str = "max over ranks") -> int:
    """The largest `n` of all ranks."""
    if world == 1:
        return n
    t = torch.tensor([n], device=device)
    _collective(what, world, torch.distributed.all_reduce, t, torch.distributed.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, world: int, device: torch.device, what: str = "stop flag") -> bool:
    """Whether `flag` is true on any rank (every rank gets the same answer: they stop at the same iteration)."""
    return bool(max_over_ranks(int(bool(flag)), world, device, what))


def average_gradients(params, world: int, what: str = "average gradients") -> None:
    """All-reduce the gradients of `params` to their mean over ranks (a missing gradient counts as zero)."""
    if world == 1:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)

    def reduce_all():
        for p in params:
            torch.distributed.all_reduce(p.grad)

    _collective(what, world, reduce_all)
    for p in params:
        p.grad /= world
