"""LocalSelfAttention2d: the fused layer path of every backend against the reference."""

import copy

import pytest
import torch

from sasa_lightning.nn import LocalSelfAttention2d
from test_operator import OTHER_BACKENDS, TRAINABLE_ON_CPU


def run(layer, x):
    """layer(x), on the GPU for the backend that runs only there (triton on a machine with CUDA;
    without one it runs under Triton's interpreter). The move of x is differentiable; after the
    backward, layer.cpu() brings the parameters and their gradients back."""
    if layer.backend != "triton" or not torch.cuda.is_available():
        return layer(x)
    return layer.cuda()(x.cuda()).cpu()


def grads_of(layer, x):
    x = x.clone().requires_grad_()
    out = run(layer, x)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out))
    return [out.detach(), x.grad] + [p.grad for p in layer.cpu().parameters()]


# The stride pools after attention, the same for every backend: the triton backend, slow under
# Triton's interpreter, is checked at stride 1.
BACKEND_STRIDES = [(b, s) for b in OTHER_BACKENDS for s in (1, 2) if not (b == "triton" and s == 2)]


@pytest.mark.parametrize("backend,stride", BACKEND_STRIDES)
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
@pytest.mark.parametrize(
    "positional,logits", [("relative", "qk+qr"), ("relative", "qr"), ("absolute", "qk+qr"), ("none", "qk+qr")]
)
@pytest.mark.parametrize("padding", ["zeros", "mask"])
def test_layer_backend_matches_reference(backend, stride, kernel_size, positional, logits, padding, small_tiles):
    options = dict(kernel_size=kernel_size, heads=2, stride=stride, positional=positional, logits=logits, padding=padding)
    reference = LocalSelfAttention2d(6, 8, backend="reference", **options).double()
    other = copy.deepcopy(reference)
    other.backend = backend
    x = torch.randn(2, 6, 6, 10, dtype=torch.float64)
    got, expected = grads_of(other, x), grads_of(reference, x)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_stride_two_pools_attention_at_input_resolution():
    layer = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2, stride=2)
    x = torch.randn(1, 8, 6, 6)
    full = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2)
    full.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), torch.nn.functional.avg_pool2d(full(x), 2))


def test_parameters_match_the_paper():
    """Dense q, k, v (3 d_in d_out) plus k * d_out relative embeddings; no key matrix for q.r-only."""
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(LocalSelfAttention2d(64, 128, kernel_size=7)) == 3 * 64 * 128 + 7 * 128
    assert count(LocalSelfAttention2d(64, 128, kernel_size=7, logits="qr")) == 2 * 64 * 128 + 7 * 128
    assert count(LocalSelfAttention2d(64, 128, positional="absolute")) == 3 * 64 * 128


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(out_channels=12, heads=8), r"out_channels \(12\) must be divisible by heads \(8\)"),
        (dict(out_channels=24, heads=8), "channels per head must be even"),
        (dict(kernel_size=6), "kernel_size must be a positive odd number"),
        (dict(positional="learned"), "positional must be one of"),
        (dict(logits="qk"), "logits must be one of"),
        (dict(padding="same"), "padding must be one of"),
        (dict(backend="fast"), "backend must be one of"),
        (dict(stride=3), "stride must be one of"),
        (dict(logits="qr", positional="none"), "positional must be 'relative'"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    options = dict(in_channels=16, out_channels=16, heads=2) | kwargs
    with pytest.raises(ValueError, match=message):
        LocalSelfAttention2d(**options)


def test_a_layer_checks_its_options_once_where_it_is_built(monkeypatch):
    from sasa_lightning.nn import attention, functional

    checks = []
    check = functional.check_options
    counted = lambda *options: checks.append(options) or check(*options)  # noqa: E731
    monkeypatch.setattr(attention, "check_options", counted)
    monkeypatch.setattr(functional, "check_options", counted)
    layer = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2)
    for _ in range(3):
        layer(torch.randn(1, 8, 5, 5))
    assert checks == [(3, "zeros", "auto")]


def test_bf16_autocast_runs_forward_and_backward():
    layer = LocalSelfAttention2d(8, 8, kernel_size=3, heads=2)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", TRAINABLE_ON_CPU)
def test_the_output_may_be_changed_in_place(backend):
    """The next layer may write into the output (an in-place ReLU, FPN's top-down sum); backward
    must not need it. Gradients as the reference's, whose output is changed the same way."""
    reference = LocalSelfAttention2d(4, 4, kernel_size=3, heads=2, backend="reference").double()
    other = copy.deepcopy(reference)
    other.backend = backend
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)

    def grads(layer):
        inputs = x.clone().requires_grad_()
        run(layer, inputs).mul_(3).relu_().sum().backward()
        return [inputs.grad] + [p.grad for p in layer.cpu().parameters()]

    for got, expected in zip(grads(other), grads(reference)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["cpu", "compiled"])
@pytest.mark.parametrize("positional", ["relative", "absolute"])
@pytest.mark.parametrize("chunk_elements,expected_chunks", [(2 * 3 * 16 * 30, 4), (3 * 2 * 2 * 30, 32)])
def test_chunks_of_images_and_of_heads_match_reference(backend, positional, chunk_elements, expected_chunks,
                                                       monkeypatch):
    """The fused layer's loop over two images at a time, and over pairs of heads of one image."""
    from sasa_lightning.nn.backends import fused

    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    assert len(fused.plan_chunks(8, 8, 2, 30)) == expected_chunks
    reference = LocalSelfAttention2d(6, 16, kernel_size=3, heads=8, positional=positional, backend="reference").double()
    other = copy.deepcopy(reference)
    other.backend = backend
    x = torch.randn(8, 6, 5, 6, dtype=torch.float64)
    for got, expected in zip(grads_of(other, x), grads_of(reference, x)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
