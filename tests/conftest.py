import pytest
import torch


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
