"""Time the triton backend's kernels with each candidate query tile and warp count, on a GPU, at
the layer benchmark's shapes (bf16, k = 7, 8 heads): what triton_launch.TILES and WARPS are
chosen by.

The kernels run on q, k, v laid out as the layer lays them out (slices of one channels-last
projection), forward alone and backward alone (both passes), CUDA events, the median after
warm-ups. Prints a table and the fastest tile per shape, writes
benchmarks/results/triton-tiles-cuda.json.

    python benchmarks/triton_tiles.py                     # or: sasa bench triton-tiles
    python benchmarks/triton_tiles.py --tiles 2x8x8,8x8x8
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from layer import cuda_times
from report import write_report

RESULTS = Path(__file__).parent / "results"
SHAPES = [(64, 64, 56, 56), (64, 256, 14, 14)]
KERNEL_SIZE, HEADS = 7, 8
# rows x columns x warps
TILES = ["2x8x4", "2x8x8", "4x4x8", "4x8x8", "8x8x8"]


def _tile(text: str) -> tuple[int, int, int]:
    try:
        rows, cols, warps = (int(part) for part in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a tile is ROWSxCOLUMNSxWARPS, e.g. 2x8x8; got {text!r}") from None
    return rows, cols, warps


def measure(shape: tuple[int, int, int, int], tile: tuple[int, int, int]) -> dict:
    import torch

    from sasa_lightning.nn.backends import triton_launch
    from sasa_lightning.nn.backends.triton_layer import _heads

    batch, channels, height, width = shape
    dim = channels // HEADS

    def heads(t):
        return _heads(t, HEADS, height, width)

    def projection():
        return torch.randn(batch, height * width, 3 * channels, device="cuda", dtype=torch.bfloat16)

    qkv, grads = projection(), projection()
    q, k, v = (heads(qkv[..., i * channels:(i + 1) * channels]) for i in range(3))
    grad_q, grad_k, grad_v = (heads(grads[..., i * channels:(i + 1) * channels]) for i in range(3))
    rel_rows, rel_cols = (torch.randn(HEADS, KERNEL_SIZE, dim // 2, device="cuda", dtype=torch.bfloat16)
                          for _ in range(2))
    out = heads(torch.empty(batch, height * width, channels, device="cuda", dtype=torch.bfloat16))
    grad_out = heads(torch.randn(batch, height * width, channels, device="cuda", dtype=torch.bfloat16))
    lse = torch.empty(batch, HEADS, height, width, device="cuda")

    def forward():
        triton_launch.forward(q, k, v, rel_rows, rel_cols, out, lse, KERNEL_SIZE, False, tile)

    def backward():
        triton_launch.backward(grad_out, q, k, v, rel_rows, rel_cols, lse, grad_q, grad_k, grad_v, KERNEL_SIZE,
                               False, tile)

    forward()
    torch.cuda.synchronize()
    return {"forward_s": statistics.median(cuda_times(forward, 0.5, 20)),
            "backward_s": statistics.median(cuda_times(backward, 0.5, 20))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=lambda text: [_tile(t) for t in text.split(",")],
                        default=[_tile(t) for t in TILES], help=f"comma-separated (default: {','.join(TILES)})")
    parser.add_argument("--out", type=Path, default=RESULTS / "triton-tiles-cuda.json")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("triton_tiles.py: needs a CUDA GPU; torch sees none here", file=sys.stderr)
        return 2
    rows = []
    print(f"{'shape':>18} {'tile':>8} {'forward ms':>11} {'backward ms':>12} {'total ms':>9}", flush=True)
    for shape in SHAPES:
        for tile in args.tiles:
            row = {"shape": list(shape), "tile": list(tile), **measure(shape, tile)}
            row["total_s"] = row["forward_s"] + row["backward_s"]
            rows.append(row)
            print(f"{str(shape):>18} {'x'.join(map(str, tile)):>8} {row['forward_s'] * 1e3:11.3f} "
                  f"{row['backward_s'] * 1e3:12.3f} {row['total_s'] * 1e3:9.3f}", flush=True)
        best = min((r for r in rows if r["shape"] == list(shape)), key=lambda r: r["total_s"])
        print(f"{str(shape):>18} fastest: {'x'.join(map(str, best['tile']))}", flush=True)
    write_report(args.out, "triton_tiles", kernel_size=KERNEL_SIZE, heads=HEADS, dtype="bfloat16",
                 note="the kernels alone on the layer's channels-last q, k, v; forward_s, backward_s (both passes): "
                      "median by CUDA events; tile: rows, columns, warps", results=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
