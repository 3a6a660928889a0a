"""The `comfy` fixture: one real ComfyUI server per test session (see harness.py). Skips every test that
uses it when $COMFYUI_PATH is unset or not a ComfyUI checkout."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a real ComfyUI ($COMFYUI_PATH); skipped without it")


class _SkippedModule(pytest.Module):
    """A test module of this folder collected while ComfyUI is unavailable: skipped as a whole, not imported,
    so the whole folder reports one skip line."""

    def collect(self):
        pytest.skip(harness.find_comfyui()[1])


def pytest_pycollect_makemodule(module_path, parent):
    if harness.find_comfyui()[0] is None:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="session")
def comfy():
    path, reason = harness.find_comfyui()
    if path is None:
        pytest.skip(reason)
    server = harness.ComfyServer(path)
    try:
        client = server.start()
    except BaseException:
        server.stop(remove=False)
        raise
    try:
        yield client
    finally:
        server.stop()
