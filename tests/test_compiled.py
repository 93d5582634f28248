"""The compiled backend compiled for real (elsewhere its formulation runs eagerly, see conftest)."""

import copy

import pytest
import torch
import torch._dynamo

from sasa_lightning.nn import LocalSelfAttention2d, functional
from sasa_lightning.nn.backends import compiled
from test_operator import assert_all_close, forward_backward, make_inputs


@pytest.mark.inductor
def test_forward_and_backward_are_single_graphs():
    """A graph break would run part of the formulation eagerly, expanding keys and values k^2
    times; the compiled functions must trace whole."""
    q = torch.randn(2, 2, 4, 6, 9)
    rel = torch.randn(2, 3, 2)
    mask = torch.tensor(True)
    lse = torch.randn(2, 2, 6, 9)
    for fn, args in ((compiled._forward, (q, q, q, rel, rel, 3, mask)),
                     (compiled._backward, (q, q, q, q, rel, rel, lse, 3, mask))):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(fn)(*args)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.slow
@pytest.mark.inductor
def test_compiled_backend_matches_reference_when_compiled():
    """Every option through one compiled graph (absent keys and embeddings are zeros, the mask
    a tensor), then a layer of another shape through the same graph without recompiling."""
    torch._dynamo.reset()
    kernel_size = 3
    for padding in ("zeros", "mask"):
        for keys, relative in ((True, True), (True, False), (False, True)):
            inputs = make_inputs(1, 2, 4, 6, 9, kernel_size, keys=keys, relative=relative)

            def run(name):
                return forward_backward(
                    lambda *t: functional.local_attention(*t, kernel_size, padding, backend=name), inputs)

            assert_all_close(run("compiled"), run("reference"))
    frames = torch._dynamo.utils.counters["frames"]["ok"]

    reference = LocalSelfAttention2d(6, 8, kernel_size=5, heads=2, stride=2, backend="reference").double()
    other = copy.deepcopy(reference)
    other.backend = "compiled"
    x = torch.randn(3, 6, 7, 10, dtype=torch.float64)

    def grads(layer):
        inputs = x.clone().requires_grad_()
        layer(inputs).pow(2).sum().backward()
        return [inputs.grad] + [p.grad for p in layer.parameters()]

    assert_all_close(grads(other), grads(reference))
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames, "a new shape recompiled the compiled backend"
