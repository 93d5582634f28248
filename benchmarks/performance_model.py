"""The triton backend's performance model on H100 and H200, on paper: what its kernels must move and
compute, the bound each sets at the device's peak figures, and so the time a GPU measurement is
judged against. No GPU is needed; the counts follow the code as it is (the kernels' blocks are
triton_launch.launch_config's).

Per layer (one forward+backward, bf16 training):
- The attention kernels (triton_kernels.py) multiply on tensor cores, a tile's BLOCK_M queries
  against its BLOCK_HALO halo keys with head dims padded to BLOCK_D: per tile, forward S = QK^T,
  the q.r table QR2^T (2 BLOCK_R offsets), the relative logits U2 E2^T (twice: bf16 operands
  split in two) and PV; the query pass S again, dO V^T, dS K, dS E2 (twice), dSa R2 and dSa^T Q
  (twice each); the key pass K Q^T, the halo's q.r table, its relative logits (twice), P^T dO,
  V dO^T and dS^T Q. TENSOR_MACS_PER_TILE counts them. Bound: the bf16 tensor rate.
- The same kernels' element-wise work on the CUDA cores, per element of the BLOCK_M x BLOCK_HALO
  logit block: ELEMENTWISE_OPS over the three kernels (masks, scaling, exp2, the row sums,
  dS = P (dP - delta), the casts to bf16 operands). Bound: the float32 rate counted as one
  operation a lane a cycle (half the FMA-counted FLOP rate).
- Memory: the layer path (triton_layer.py) is bf16 throughout; PASSES lists every pass over a
  (C, H, W) tensor, bytes per channel and pixel, forward then backward; lse and delta are float32
  per pixel and head. The kernels' halo reloads come from L2 and are not counted.
- The projections, recomputed in backward, and their gradients: 12 matrix products of C_in x
  C_out per pixel, on tensor cores.
- A 3x3 convolution of the same width for comparison: 3 x 2 x 9 C_in C_out FLOPs per pixel on
  tensor cores, and its activations read and written in bf16.
A phase's bound is the largest of its times at the tensor rate, the CUDA cores' rate and HBM's;
the phases (kernels, projections) run one after the other, so a layer's bound is their sum.

A training step of SASA-ResNet-50 against ResNet-50 at 224 x 224, batch 128: the same network but
for the 16 spatial layers, so it takes ResNet-50's time plus delta = the attention layers' time
minus the 3x3 convolutions'. ResNet-50's own step is far from any peak figure (batch norm and
the element-wise ops are bound by memory, convolutions reach a fraction of the tensor cores'
rate), so it is left to measurement: SASA-ResNet-50 reaches 0.6x ResNet-50's images/s when
ResNet-50's step takes at least 1.5 delta, that is when ResNet-50 runs at most 128 / (1.5 delta)
images/s, the break-even printed below, with the attention layers at their bound.

    python benchmarks/performance_model.py     # or: sasa bench performance-model
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from report import write_report

from sasa_lightning.nn.backends.triton_launch import launch_config

RESULTS = Path(__file__).parent / "results"

# Public peak figures (NVIDIA's data sheets, SXM parts): dense BF16 tensor-core FLOP/s, FP32
# FLOP/s of the CUDA cores (an FMA counted as 2), HBM bytes/s.
DEVICES = {
    "H100 SXM": {"tensor": 989e12, "fp32": 66.9e12, "hbm": 3.35e12},
    "H200 SXM": {"tensor": 989e12, "fp32": 66.9e12, "hbm": 4.8e12},
}

# CUDA-core operations per element of a tile's logit block, forward (mask, scale, max, exp2, sum,
# bf16 cast: 8), query pass (mask, exp2, the product with dP, delta's sum, dS, two casts: 10),
# key pass (the same, and the window mask recomputed: 12).
ELEMENTWISE_OPS = 8 + 10 + 12

# Bytes per channel and pixel of each pass over a (C, H, W) tensor in the layer path
# (triton_layer.py, bf16), forward then backward: (what, bytes read, bytes written).
PASSES = [
    ("projection reads x, writes q, k, v", 2, 3 * 2), ("forward kernel reads q, k, v; writes out", 3 * 2, 2),
    ("projection again", 2, 3 * 2), ("query kernel reads q, k, v, dO; writes dq", 4 * 2, 2),
    ("key kernel reads q, k, v, dO; writes dk, dv over k, v", 4 * 2, 2 * 2),
    ("grad_x reads dq, dk, dv; writes dx", 3 * 2, 2), ("weight gradients read dq, dk, dv and x three times", 6 * 2, 0),
]
KERNEL_PASSES = ("forward kernel reads q, k, v; writes out", "query kernel reads q, k, v, dO; writes dq",
                 "key kernel reads q, k, v, dO; writes dk, dv over k, v")
PER_PIXEL_HEAD_BYTES = 4 * (1 + 1 + 1 + 1 + 1)  # lse written, read by both passes; delta written and read
CONV_BYTES = 2 * (1 + 1) + 2 * (1 + 1 + 1)  # forward reads x, writes y; backward reads dy and x, writes dx (bf16)


@dataclass(frozen=True)
class Layer:
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: int = 7
    heads: int = 8
    stride: int = 1  # attention runs at the input resolution and pools; the convolution strides

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width


def tensor_macs_per_tile(config: dict) -> int:
    """The kernels' tensor-core multiply-adds for one tile of one head, forward+backward."""
    m, halo, r2, d = config["BLOCK_M"], config["BLOCK_HALO"], 2 * config["BLOCK_R"], config["BLOCK_D"]
    logits = m * halo * d + m * r2 * d + 2 * m * halo * r2  # S, the q.r table, its shift's product (split)
    forward = logits + m * halo * d
    query = logits + 2 * m * halo * d + 2 * m * halo * r2 + 2 * m * r2 * d + 2 * r2 * m * d
    key = m * halo * d + halo * r2 * d + 2 * m * halo * r2 + 3 * m * halo * d
    return forward + query + key


def _bound(times: list[float]) -> float:
    return max(times)


def attention_layer(layer: Layer, device: dict) -> dict:
    head_dim = layer.out_channels // layer.heads
    config = launch_config(head_dim, layer.kernel_size)
    tiles_h = -(-layer.height // config["TILE_H"])
    tiles = layer.batch * layer.heads * tiles_h * -(-layer.width // config["TILE_W"])
    tensor_flops = 2 * tensor_macs_per_tile(config) * tiles
    elementwise = ELEMENTWISE_OPS * config["BLOCK_M"] * config["BLOCK_HALO"] * tiles
    channel_pixels = layer.out_channels * layer.pixels
    kernel_bytes = sum(r + w for name, r, w in PASSES if name in KERNEL_PASSES) * channel_pixels
    kernel_bytes += PER_PIXEL_HEAD_BYTES * layer.pixels * layer.heads
    rest_bytes = sum(r + w for name, r, w in PASSES if name not in KERNEL_PASSES) * channel_pixels
    rest_flops = 12 * 2 * layer.in_channels * layer.out_channels * layer.pixels
    times = {"kernel_tensor_s": tensor_flops / device["tensor"], "kernel_cuda_cores_s": elementwise / (device["fp32"] / 2),
             "kernel_memory_s": kernel_bytes / device["hbm"]}
    rest_time = _bound([rest_flops / device["tensor"], rest_bytes / device["hbm"]])
    return {"flops": tensor_flops + rest_flops, "bytes": kernel_bytes + rest_bytes, "kernel_flops": tensor_flops,
            "kernel_elementwise_ops": elementwise, "kernel_bytes": kernel_bytes, **times,
            "time_s": _bound(list(times.values())) + rest_time}


def conv_layer(layer: Layer, device: dict) -> dict:
    pixels = layer.pixels // layer.stride**2
    flops = 3 * 2 * 9 * layer.in_channels * layer.out_channels * pixels
    nbytes = CONV_BYTES * layer.out_channels * pixels
    return {"flops": flops, "bytes": nbytes, "time_s": _bound([flops / device["tensor"], nbytes / device["hbm"]])}


def resnet50_spatial_layers(batch: int) -> list[Layer]:
    """The 16 layers SASA-ResNet-50 replaces (at the input resolution; stride 2 pools afterwards)."""
    layers = []
    for width, blocks, size in ((64, 3, 56), (128, 4, 56), (256, 6, 28), (512, 3, 14)):
        for block in range(blocks):
            stride = 2 if block == 0 and width > 64 else 1
            side = size if block == 0 or width == 64 else size // 2
            layers.append(Layer(batch, width, width, side, side, stride=stride))
    return layers


TARGET_RATIO = 0.6  # SASA-ResNet-50's images/s over ResNet-50's (issue: at least 0.6x)


def training_step(batch: int, device: dict) -> dict:
    layers = resnet50_spatial_layers(batch)
    attention = sum(attention_layer(layer, device)["time_s"] for layer in layers)
    convs = sum(conv_layer(layer, device)["time_s"] for layer in layers)
    delta = attention - convs
    # T / (T + delta) >= r  <=>  T >= delta r / (1 - r)
    break_even = batch / (delta * TARGET_RATIO / (1 - TARGET_RATIO))
    return {"attention_s": attention, "spatial_convs_s": convs, "delta_s": delta,
            "break_even_resnet50_images_per_s": break_even}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "performance-model-h100-h200.json")
    args = parser.parse_args()
    report = {}
    for name, device in DEVICES.items():
        print(f"\n{name}: {device['tensor'] / 1e12:.0f} TFLOP/s bf16 tensor, {device['fp32'] / 1e12:.1f} TFLOP/s fp32, "
              f"{device['hbm'] / 1e12:.2f} TB/s")
        print(f"{'layer (B, C, H, W), k 7, 8 heads':34} {'GFLOP':>7} {'GB':>6} {'tensor':>9} {'CUDA cores':>11} "
              f"{'memory':>9} {'layer bound':>12} {'3x3 conv':>9} {'ratio':>6}")
        rows = []
        for layer in (Layer(64, 64, 64, 56, 56), Layer(64, 256, 256, 14, 14)):
            attention, conv = attention_layer(layer, device), conv_layer(layer, device)
            shape = f"({layer.batch}, {layer.out_channels}, {layer.height}, {layer.width})"
            print(f"{shape:34} {attention['flops'] / 1e9:7.1f} {attention['bytes'] / 1e9:6.2f} "
                  f"{attention['kernel_tensor_s'] * 1e3:6.3f} ms {attention['kernel_cuda_cores_s'] * 1e3:8.3f} ms "
                  f"{attention['kernel_memory_s'] * 1e3:6.3f} ms {attention['time_s'] * 1e3:9.3f} ms "
                  f"{conv['time_s'] * 1e3:6.3f} ms {attention['time_s'] / conv['time_s']:6.1f}")
            rows.append({"layer": shape, "attention": attention, "conv3x3": conv})
        step = training_step(128, device)
        print(f"training step, 224 x 224, batch 128: the 16 attention layers {step['attention_s'] * 1e3:.1f} ms where "
              f"ResNet-50's 3x3 convolutions take {step['spatial_convs_s'] * 1e3:.1f} ms, delta "
              f"{step['delta_s'] * 1e3:.1f} ms; SASA-ResNet-50 reaches {TARGET_RATIO}x ResNet-50's images/s if "
              f"ResNet-50 runs at most {step['break_even_resnet50_images_per_s']:,.0f} images/s")
        report[name] = {"peaks": device, "layers": rows, "training_step": step}
    write_report(args.out, "performance_model", devices=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
