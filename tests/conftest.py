import pytest
import torch

from sasa_lightning.nn.backends import chunked


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def small_tiles(monkeypatch):
    """Force the chunked backend to cut even tiny inputs into many tiles (rows and images)."""
    monkeypatch.setattr(chunked, "TILE_ELEMENTS", 200)
