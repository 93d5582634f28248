"""The flex backend: its forward on CPU (flex has no backward there), everything on CUDA."""

import itertools

import pytest
import torch

from sasa_lightning.nn import LocalSelfAttention2d, functional
from sasa_lightning.nn.backends.errors import BackendUnavailable
from test_operator import CASES, forward_backward, make_inputs

OPTIONS = list(itertools.product(["zeros", "mask"], [(True, True), (True, False), (False, True)]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padding,keys_relative", OPTIONS)
def test_forward_matches_reference(case, padding, keys_relative):
    """Tokens of the padded image, the window's block mask and score_mod's q.r give eq. 3 with
    the reference's borders, for images smaller than the window and single rows too."""
    *shape, kernel_size = case
    keys, relative = keys_relative
    inputs = [None if t is None else t.detach() for t in make_inputs(*shape, kernel_size, keys, relative)]
    with torch.no_grad():
        got = functional.local_attention(*inputs, kernel_size, padding, backend="flex")
        expected = functional.local_attention(*inputs, kernel_size, padding, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_tiles_cover_a_wide_image_in_order():
    """An image wider and taller than one tile (8 x 16): tokens cross tile borders both ways."""
    inputs = [t.detach() for t in make_inputs(1, 2, 4, 19, 37, 5)]
    with torch.no_grad():
        got = functional.local_attention(*inputs, 5, backend="flex")
        expected = functional.local_attention(*inputs, 5, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_training_on_cpu_is_refused_in_one_line():
    layer = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2, backend="flex")
    with pytest.raises(BackendUnavailable, match="no backward on CPU; train with backend 'cpu'"):
        layer(torch.randn(1, 8, 5, 5))


@pytest.mark.slow
@pytest.mark.inductor
def test_compiled_flex_forward_matches_reference():
    """flex_attention compiled by inductor (as on CUDA, where it is Triton) on a 128-token tiled image."""
    inputs = [t.detach().float() for t in make_inputs(2, 2, 8, 12, 20, 7)]
    with torch.no_grad():
        got = functional.local_attention(*inputs, 7, backend="flex")
        expected = functional.local_attention(*inputs, 7, backend="reference")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.requires_cuda  # flex's backward runs on CUDA only
@pytest.mark.inductor
@pytest.mark.parametrize("case", [CASES[0], CASES[3]])  # each compiles: a common image, one smaller than the window
@pytest.mark.parametrize("padding,keys_relative", [("zeros", (True, True)), ("mask", (True, True)), ("zeros", (False, True))])
def test_cuda_forward_and_gradients_match_reference(case, padding, keys_relative):
    *shape, kernel_size = case
    keys, relative = keys_relative
    inputs = [None if t is None else t.detach().float().cuda().requires_grad_()
              for t in make_inputs(*shape, kernel_size, keys, relative)]

    def run(name):
        return forward_backward(lambda *t: functional.local_attention(*t, kernel_size, padding, backend=name), inputs)

    for got, expected in zip(run("flex"), run("reference")):
        assert (got is None) == (expected is None)
        if got is not None:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.requires_cuda  # flex's backward runs on CUDA only
@pytest.mark.inductor
@pytest.mark.parametrize("backend", ["flex", "compiled", "chunked"])
def test_cuda_layer_trains_under_bf16_autocast(backend):
    reference = LocalSelfAttention2d(32, 32, kernel_size=7, heads=4, stride=2, backend="reference").cuda()
    layer = LocalSelfAttention2d(32, 32, kernel_size=7, heads=4, stride=2, backend=backend).cuda()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(4, 32, 24, 40, device="cuda")

    def grads(module):
        inputs = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(inputs)
        out.float().pow(2).mean().backward()
        return [out.float(), inputs.grad] + [p.grad for p in module.parameters()]

    for got, expected in zip(grads(layer), grads(reference)):
        torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-2)
