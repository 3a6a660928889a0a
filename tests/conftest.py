import os
import socket

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download (subprocesses inherit this)
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = str(address[0])
    return host.startswith("127.") or host in ("::1", "localhost", "0.0.0.0", "", socket.gethostname())


def _is_ip_literal(host) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host))
        return True
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A connection to any non-loopback address raises, and fails the test even if the error was swallowed."""
    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(real):
        def connect(self, address, *args, **kwargs):
            if not _is_local(address):
                attempts.append(address)
                raise ConnectionRefusedError(f"network access in a test: connect to {address!r}")
            return real(self, address, *args, **kwargs)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_local((host,)) and not _is_ip_literal(host):
            attempts.append(host)
            raise socket.gaierror(f"network access in a test: name lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    if attempts:
        pytest.fail(f"the test tried to reach the network: {attempts}")


class TinyVelocity(torch.nn.Module):
    """A small nonlinear velocity field v(x, τ, c) with cond = (B, 4) tensor."""

    def __init__(self, channels=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.cond = torch.nn.Linear(4, channels)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, tau, cond):
        h = self.conv(x) + self.cond(cond)[:, :, None, None]
        return torch.tanh(h) * (1 + tau[:, None, None, None]) - x


@pytest.fixture
def tiny_velocity():
    return TinyVelocity()
