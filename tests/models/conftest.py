"""Fixtures of the model tests; helpers (tiny registered models) live in model_helpers.py."""
import pytest
import torch


@pytest.fixture
def perturb():
    """Add seeded noise to every parameter so nothing sits at an init value (zeros, ones, tiny uniform)."""

    def _perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
        return model

    return _perturb


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests run tiny ops where intra-op threads only add contention (2 shared cores): use one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def keep_on_cpu(monkeypatch):
    """Keep derived values in eager CPU inference as on a GPU (``_projections._keeps_derived``), so that the caching
    a GPU run relies on is tested here."""
    from vision_rwkv.models import _projections
    monkeypatch.setattr(_projections, "_keeps_derived", lambda t: True)
