"""One reward call, checked and time-limited: how the trainer scores every batch of images.

`call_reward(reward, images, prompts, where=..., timeout_s=...)` checks the images going in (the model's
fault if they are bad, not the reward's), calls the reward, and checks what comes out: one finite score per
image (`check_scores`). Every failure names the reward and the call, e.g. "(iteration 3, reward call 2,
64 images)":

- `RewardOutputError` (a ValueError): the reward returned None, something that is not numbers, the wrong
  number or shape of scores, or NaN / Inf scores.
- `RewardCallError`: the reward raised; the original exception is its `__cause__`.
- `RewardTimeoutError` (a RewardCallError and a TimeoutError): the call took longer than `timeout_s`.

Time limit: with `timeout_s` (TrainConfig.reward_timeout_s) the reward runs in a worker thread while the caller
waits at most that long. Python cannot stop a thread, so a call that overruns is abandoned: its thread is a
daemon and keeps running (and holding whatever memory it holds) until it returns or the process exits, which
it does not delay. The worker thread gets the caller's grad / inference mode and CUDA device, which torch keeps
per thread (not autocast: rewards score in their own dtype, as BatchedReward does). `timeout_s` None or 0
calls the reward directly, in the caller's thread.
"""

from __future__ import annotations

import numbers
import threading
from typing import Callable, Sequence

import torch

from ..models.protocols import check_reward_inputs


class RewardOutputError(ValueError):
    """A reward's return value breaks the contract: one finite score per image."""


class RewardCallError(RuntimeError):
    """A reward raised (the original exception is `__cause__`)."""


class RewardTimeoutError(RewardCallError, TimeoutError):
    """A reward call took longer than its time limit."""


def reward_name(reward) -> str:
    """What messages call a reward: its `name`, else its function or class name."""
    name = getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__
    return str(name)


def check_scores(scores, batch: int, name: str) -> torch.Tensor:
    """A reward's return value as (batch,) float32: a tensor, array or list of `batch` finite real numbers,
    shaped (batch,) or (batch, 1) (or a single number for one image). RewardOutputError naming `name` else."""
    expected = f"expected one finite score per image, a tensor of shape ({batch},)"
    if scores is None:
        raise RewardOutputError(f"reward {name!r} returned None; {expected}")
    if isinstance(scores, torch.Tensor):
        t = scores
    elif isinstance(scores, (list, tuple, numbers.Real)) or hasattr(scores, "__array__"):
        try:
            t = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError):
            raise RewardOutputError(
                f"reward {name!r} returned a {type(scores).__name__} that is not numbers; {expected}"
            ) from None
    else:
        raise RewardOutputError(f"reward {name!r} returned a {type(scores).__name__}; {expected}")
    if t.dtype == torch.bool or t.is_complex():
        raise RewardOutputError(f"reward {name!r} returned {t.dtype} scores; {expected}")
    if t.numel() != batch:
        raise RewardOutputError(f"reward {name!r} returned {t.numel()} scores for {batch} images; {expected}")
    if not (t.ndim == 0 or t.shape[0] == batch) or t.ndim > 2 or (t.ndim == 2 and t.shape[1] != 1):
        raise RewardOutputError(f"reward {name!r} returned scores of shape {tuple(t.shape)}; {expected}")
    t = t.detach().float().flatten()
    bad = (~torch.isfinite(t)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"{i}: {t[i].item()}" for i in bad[:4]) + (" …" if len(bad) > 4 else "")
        raise RewardOutputError(
            f"reward {name!r} returned non-finite scores for {len(bad)} of {batch} images ({shown}); {expected}"
        )
    return t


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and its message, whitespace collapsed."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _run_in_thread(fn: Callable, timeout_s: float, name: str, where: str):
    """fn() in a daemon thread with the caller's torch thread state; its result, its exception, or
    RewardTimeoutError after `timeout_s` seconds (the thread is abandoned)."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
    box: dict = {}

    def target():
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name=f"densegrpo reward {name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeoutError(
            f"reward {name!r} did not return within reward_timeout_s = {timeout_s:g} s ({where}); the run stops "
            f"here and can resume from its last checkpoint (the stuck call is left running in a background thread)"
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_reward(
    reward: Callable,
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    name: str | None = None,
    where: str = "",
    timeout_s: float | None = None,
) -> torch.Tensor:
    """Scores (B,) float32 on the images' device of `reward(images (B, H, W, 3) in [0, 1], prompts)`, checked
    and, with `timeout_s`, time-limited; `where` says which call it is in the errors ("iteration 3")."""
    name = name or reward_name(reward)
    where = ", ".join(w for w in (where, f"{images.shape[0]} images" if isinstance(images, torch.Tensor) else "") if w)
    try:
        check_reward_inputs(images, prompts)
    except ValueError as e:
        raise ValueError(f"the images given to reward {name!r} ({where}) are not valid: {e}") from None
    prompts = list(prompts)
    try:
        if timeout_s:
            out = _run_in_thread(lambda: reward(images, prompts), timeout_s, name, where)
        else:
            out = reward(images, prompts)
        return check_scores(out, images.shape[0], name).to(images.device)
    except RewardTimeoutError:
        raise
    except (RewardOutputError, RewardCallError) as e:
        raise type(e)(f"{e} ({where})") from e
    except Exception as e:  # noqa: BLE001 - any failure inside a reward is reported as that reward's
        raise RewardCallError(f"reward {name!r} raised {one_line(e)} ({where})") from e


class CheckedReward:
    """A reward whose every call goes through `call_reward`, counted: what the trainer hands `score_latents`.
    `where` names the calls ("iteration 3"); the wrapped reward stays reachable as `.reward`."""

    def __init__(self, reward: Callable, where: str = "", timeout_s: float | None = None):
        self.reward, self.where, self.timeout_s = reward, where, timeout_s
        self.name = reward_name(reward)
        self.calls = 0

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        where = f"{self.where}, reward call {self.calls}" if self.where else f"reward call {self.calls}"
        return call_reward(self.reward, images, prompts, name=self.name, where=where, timeout_s=self.timeout_s)
