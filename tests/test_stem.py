"""AttentionStem: block attention against the local operator, the three value variants."""

import pytest
import torch

from sasa_lightning.nn import AttentionStem, functional


@pytest.mark.parametrize("values", ["spatially_aware", "conv", "plain"])
def test_block_attention_is_masked_local_attention_within_each_block(values):
    """Inside a 4x4 block, a 7x7 window with masked padding sees exactly the block's 16 pixels."""
    stem = AttentionStem(3, 16, heads=2, values=values).double()
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    heads, dim = 2, 8

    def blocks(t):  # (B, C, H, W) -> (B * blocks, heads, dim, 4, 4)
        b, c, h, w = t.shape
        t = t.view(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5)
        return t.reshape(-1, heads, dim, 4, 4)

    def reference(x):
        q = blocks(torch.einsum("oi,bihw->bohw", stem.query, x))
        k = blocks(torch.einsum("oi,bihw->bohw", stem.key, x))
        v = blocks(stem._values(x))
        out = functional.local_attention(
            q, k, v, stem.relative.rel_rows, stem.relative.rel_cols, 7, "mask", backend="reference"
        )
        return out.reshape(2, 2, 3, 16, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(2, 16, 8, 12)

    def grads(attend):
        stem.zero_grad()
        inputs = x.clone().requires_grad_()
        out = attend(inputs)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        return [out.detach(), inputs.grad] + [p.grad.clone() for p in stem.parameters() if p.grad is not None]

    got, expected = grads(stem.attend), grads(reference)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):  # the output, and gradients through the augmented product too
        torch.testing.assert_close(g, e)


def test_spatially_aware_values_mix_value_matrices_by_position():
    stem = AttentionStem(3, 8, heads=2, mixtures=4).double()
    p = stem.mixture_weights()
    assert p.shape == (4, 4, 4)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 4, dtype=torch.float64))
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    v = stem._values(x)
    a, b = 2, 1
    weight = sum(p[a, b, m] * stem.value[m] for m in range(4))
    torch.testing.assert_close(v[0, :, a, b], weight @ x[0, :, a, b])


@pytest.mark.parametrize("values", ["spatially_aware", "conv", "plain"])
def test_stem_output_has_stride_four_and_trains(values):
    stem = AttentionStem(values=values)
    x = torch.randn(2, 3, 32, 32)
    out = stem(x)
    assert out.shape == (2, 64, 8, 8)
    out.square().mean().backward()
    assert all(p.grad is not None for p in stem.parameters())


def test_stem_rejects_sizes_not_divisible_by_the_block():
    with pytest.raises(ValueError, match="divisible by 4"):
        AttentionStem()(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="values must be one of"):
        AttentionStem(values="mlp")
