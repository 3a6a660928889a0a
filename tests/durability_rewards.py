"""Rewards for the failure drills (tests/test_cli_durability.py, tests/test_ddp_signals.py, tools/kill_drill.py),
named `durability_rewards:<function>` on the command line: the toy reward, plus a fault at a chosen call.

Environment: DENSEGRPO_TEST_SLEEP seconds added to every call (slower iterations to signal into);
DENSEGRPO_TEST_AT the call (1-based) at which the fault happens; DENSEGRPO_TEST_FILL the folder whose disk
`fill_disk` fills."""

import os
import signal
import time

from densegrpo_core.rewards import get_reward

_toy = get_reward("toy")
_calls = [0]


def _call(images, prompts):
    _calls[0] += 1
    time.sleep(float(os.environ.get("DENSEGRPO_TEST_SLEEP", "0")))
    return _toy(images, prompts)


def _at() -> bool:
    return _calls[0] == int(os.environ.get("DENSEGRPO_TEST_AT", "0"))


def slow_toy(images, prompts):
    """The toy reward, DENSEGRPO_TEST_SLEEP seconds slower per call."""
    return _call(images, prompts)


def freeze_rank1(images, prompts):
    """The toy reward; rank 1 stops itself (SIGSTOP, as `kill -STOP` would) at call DENSEGRPO_TEST_AT."""
    r = _call(images, prompts)
    if os.environ.get("RANK") == "1" and _at():
        os.kill(os.getpid(), signal.SIGSTOP)
    return r


def fill_disk(images, prompts):
    """The toy reward; at call DENSEGRPO_TEST_AT it fills the disk holding DENSEGRPO_TEST_FILL (file `filler`)."""
    r = _call(images, prompts)
    if _at():
        path = os.path.join(os.environ["DENSEGRPO_TEST_FILL"], "filler")
        with open(path, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
    return r
