import os

import torch

# Without a GPU the triton backend's kernels run under Triton's interpreter, on CPU tensors: the
# variable must be set before Triton is imported, which the package does on first use.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sasa_lightning.nn.backends import chunked, fused


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (requires_cuda); torch sees none here")
    for item in items:
        if item.get_closest_marker("requires_cuda"):
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def small_tiles(monkeypatch):
    """Force the chunked backend to cut even tiny inputs into many tiles (rows and images), and
    the fused backends' layer (cpu, compiled) to take one head of one image at a time."""
    monkeypatch.setattr(chunked, "TILE_ELEMENTS", 200)
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 200)


@pytest.fixture(autouse=True)
def _compiled_backend_runs_eagerly(request):
    """Compiling every shape of the backend matrices would take many minutes on 2 cores, so there
    what torch.compile would compile (the compiled backend's formulation, flex_attention) runs
    eagerly, the same graph. Tests marked `inductor` (test_compiled.py, test_flex.py,
    test_custom_ops.py) compile and trace for real."""
    if request.node.get_closest_marker("inductor"):
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """(checkpoint, digits cache): three steps of test_training's quick digits run with the demo's
    EMA, shared by the tests that need a trained classifier (exports, attention maps)."""
    from sasa_lightning.cli import main
    from test_training import QUICK

    root = tmp_path_factory.mktemp("trained_digits")
    patch = pytest.MonkeyPatch()
    patch.setenv("SASA_CACHE", str(root / "cache"))
    try:
        assert main(["fit", *QUICK, "--trainer.default_root_dir", str(root / "run"), "--trainer.max_epochs", "1"]) == 0
    finally:
        patch.undo()
    return root / "run" / "checkpoints" / "last.ckpt", root / "cache"
