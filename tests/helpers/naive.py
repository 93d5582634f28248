"""Eq. 3 of the paper written as loops over pixels: an oracle independent of every backend."""

import torch


def naive_local_attention(q, k, v, rel_rows, rel_cols, kernel_size, padding):
    batch, heads, dim, height, width = q.shape
    p, half = kernel_size // 2, dim // 2
    out = torch.zeros_like(q)
    for b in range(batch):
        for n in range(heads):
            for i in range(height):
                for j in range(width):
                    query = q[b, n, :, i, j]
                    logits, values = [], []
                    for a in range(i - p, i + p + 1):
                        for c in range(j - p, j + p + 1):
                            inside = 0 <= a < height and 0 <= c < width
                            if not inside and padding == "mask":
                                continue
                            key = k[b, n, :, a, c] if inside and k is not None else torch.zeros_like(query)
                            logit = query @ key
                            if rel_rows is not None:
                                logit = logit + query[:half] @ rel_rows[n, a - i + p] + query[half:] @ rel_cols[n, c - j + p]
                            logits.append(logit)
                            values.append(v[b, n, :, a, c] if inside else torch.zeros_like(query))
                    weights = torch.stack(logits).softmax(0)
                    out[b, n, :, i, j] = weights @ torch.stack(values)
    return out
