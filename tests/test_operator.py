"""The operator: backends against the reference, the reference against eq. 3, and properties."""

import pytest
import torch

from sasa_lightning.nn import functional
from sasa_lightning.nn.backends import BACKENDS
from helpers.naive import naive_local_attention

# flex has no backward on CPU: tests/test_flex.py checks its forward here and all of it on CUDA.
TRAINABLE_ON_CPU = [name for name in BACKENDS if name != "flex"]
OTHER_BACKENDS = [name for name in TRAINABLE_ON_CPU if name != "reference"]


def make_inputs(batch, heads, dim, height, width, kernel_size, keys=True, relative=True):
    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    q, v = leaf(batch, heads, dim, height, width), leaf(batch, heads, dim, height, width)
    k = leaf(batch, heads, dim, height, width) if keys else None
    rel = (leaf(heads, kernel_size, dim // 2), leaf(heads, kernel_size, dim // 2)) if relative else (None, None)
    return q, k, v, *rel


def attend(*args, backend, **kwargs):
    """functional.local_attention, run on the GPU for the backend that runs only there (triton on a
    machine with CUDA; without one it runs on CPU tensors under Triton's interpreter). The moves
    are differentiable, so gradients still arrive at the CPU inputs."""
    if backend == "triton" and torch.cuda.is_available():
        args = [a.to("cuda") if isinstance(a, torch.Tensor) else a for a in args]
        return functional.local_attention(*args, backend=backend, **kwargs).cpu()
    return functional.local_attention(*args, backend=backend, **kwargs)


def forward_backward(fn, inputs):
    for t in inputs:
        if t is not None:
            t.grad = None
    out = fn(*inputs)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out))
    return [out.detach()] + [None if t is None else t.grad.clone() for t in inputs]


def assert_all_close(got, expected):
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


CASES = [
    # (batch, heads, dim, height, width, kernel_size)
    (2, 2, 4, 6, 9, 3),
    (1, 1, 2, 7, 5, 5),
    (2, 8, 2, 5, 6, 7),
    (1, 2, 4, 3, 2, 7),  # image smaller than the window
    (3, 2, 6, 1, 4, 5),  # a single row
]


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("padding", ["zeros", "mask"])
@pytest.mark.parametrize("keys,relative", [(True, True), (True, False), (False, True)])
def test_backend_matches_reference(backend, case, padding, keys, relative, small_tiles):
    *shape, kernel_size = case
    inputs = make_inputs(*shape, kernel_size, keys=keys, relative=relative)

    def run(name):
        return forward_backward(lambda *t: attend(*t, kernel_size, padding, backend=name), inputs)

    assert_all_close(run(backend), run("reference"))


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_an_odd_head_dim_without_relative_logits(backend, small_tiles):
    """Relative embeddings need an even head dim; q.k alone does not (compiled once mis-sized its
    zero embeddings for an odd one)."""
    inputs = make_inputs(2, 2, 5, 4, 6, 3, keys=True, relative=False)

    def run(name):
        return forward_backward(lambda *t: attend(*t, 3, "zeros", backend=name), inputs)

    assert_all_close(run(backend), run("reference"))


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("padding", ["zeros", "mask"])
def test_float32_matches_float64_reference(backend, padding, small_tiles):
    """The float32 paths (the cpu kernel's vectorised exp over whole registers, its scalar tail,
    and -inf for masked logits) against the float64 reference, with logits spread over tens:
    some window weights underflow to 0, as they do in trained models."""
    kernel_size = 5
    inputs = make_inputs(2, 2, 8, 7, 21, kernel_size)  # 21 = two registers of 8 and a tail of 5
    inputs = [t.detach().mul(2).requires_grad_() for t in inputs]
    expected = forward_backward(
        lambda *t: functional.local_attention(*t, kernel_size, padding, backend="reference"), inputs)
    singles = [t.detach().float().requires_grad_() for t in inputs]
    got = forward_backward(lambda *t: attend(*t, kernel_size, padding, backend=backend), singles)
    for g, e in zip(got, expected):  # float32 sums over many pixels: tolerance in units of the largest
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5 * e.abs().max().item())


@pytest.mark.parametrize("padding", ["zeros", "mask"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_reference_is_eq3(padding, kernel_size):
    q, k, v, rel_rows, rel_cols = (t.detach() for t in make_inputs(2, 2, 4, 4, 5, kernel_size))
    got = functional.local_attention(q, k, v, rel_rows, rel_cols, kernel_size, padding, backend="reference")
    torch.testing.assert_close(got, naive_local_attention(q, k, v, rel_rows, rel_cols, kernel_size, padding))


@pytest.mark.parametrize("backend", TRAINABLE_ON_CPU)
def test_gradient_is_local(backend, small_tiles):
    """An output pixel depends on no input pixel outside its k x k window."""
    kernel_size, (i, j) = 3, (4, 2)
    q, k, v, rel_rows, rel_cols = make_inputs(1, 2, 4, 8, 7, kernel_size)
    out = attend(q, k, v, rel_rows, rel_cols, kernel_size, backend=backend)
    out[0, :, :, i, j].sum().backward()
    outside = torch.ones(8, 7, dtype=torch.bool)
    outside[i - 1 : i + 2, j - 1 : j + 2] = False
    for t in (k, v):
        assert t.grad[..., outside].abs().max() == 0
        assert t.grad[..., ~outside].abs().max() > 0
    query_grad = q.grad.clone()
    query_grad[..., i, j] = 0
    assert query_grad.abs().max() == 0


@pytest.mark.parametrize("backend", TRAINABLE_ON_CPU)
def test_masked_attention_is_translation_equivariant(backend):
    kernel_size, shift = 3, 2
    q, k, v, rel_rows, rel_cols = (t.detach() for t in make_inputs(1, 2, 4, 12, 12, kernel_size))
    def run(*t):
        return attend(*t, rel_rows, rel_cols, kernel_size, "mask", backend=backend)

    rolled = [torch.roll(t, shifts=(shift, shift), dims=(-2, -1)) for t in (q, k, v)]
    inner = slice(kernel_size + shift, 12 - kernel_size)
    torch.testing.assert_close(run(*rolled)[..., inner, inner], torch.roll(run(q, k, v), (shift, shift), (-2, -1))[..., inner, inner])


@pytest.mark.parametrize("backend", TRAINABLE_ON_CPU)
@pytest.mark.parametrize("padding", ["zeros", "mask"])
def test_equal_logits_average_the_window(backend, padding):
    kernel_size = 3
    _, k, v, rel_rows, rel_cols = (t.detach() for t in make_inputs(1, 2, 4, 5, 6, kernel_size))
    q = torch.zeros_like(v)  # every logit is 0
    out = attend(q, k, v, rel_rows, rel_cols, kernel_size, padding, backend=backend)
    window_sum = torch.nn.functional.avg_pool2d(v.flatten(1, 2), 3, 1, 1, divisor_override=1).view_as(v)
    if padding == "zeros":
        expected = window_sum / 9  # padded neighbours count, with value 0
    else:
        counts = torch.nn.functional.avg_pool2d(torch.ones(1, 1, 5, 6, dtype=v.dtype), 3, 1, 1, divisor_override=1)
        expected = window_sum / counts
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=4), "kernel_size must be a positive odd number"),
        (dict(padding="reflect"), "padding must be one of"),
        (dict(backend="cuda-magic"), "backend must be one of"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    q, k, v, _, _ = make_inputs(1, 2, 4, 5, 5, 3, relative=False)
    options = dict(kernel_size=3, padding="zeros", backend="auto") | kwargs
    with pytest.raises(ValueError, match=message):
        functional.local_attention(q, k, v, None, None, **options)


def test_bad_shapes_are_rejected():
    q, k, v, rel_rows, rel_cols = make_inputs(1, 2, 4, 5, 5, 3)
    with pytest.raises(ValueError, match=r"\(heads, kernel_size, head_dim/2\)"):
        functional.local_attention(q, k, v, rel_rows, rel_cols, 5)
    with pytest.raises(ValueError, match="q, k, v must all have shape"):
        functional.local_attention(q, k[:, :1], v, rel_rows, rel_cols, 3)
    with pytest.raises(ValueError, match="rel_rows and rel_cols are required"):
        functional.local_attention(q, None, v, None, None, 3)
