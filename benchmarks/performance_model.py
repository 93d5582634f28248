"""The triton backend's performance model on H100 and H200, on paper: what its kernels must move and
compute, the bound each sets at the device's peak figures, and so the time a GPU measurement is
judged against. No GPU is needed; the counts follow the code as it is.

Per layer (one forward+backward, bf16 training):
- The attention kernels (triton_kernels.py) run on the CUDA cores in float32: per pixel, head and
  window offset, 41 FLOPs per channel of the head (forward 8; backward: the query kernel's two
  sweeps 7 + 16, the key kernel 10), FMA counted as 2. Bound: FP32 rate.
- The rest of the layer (fused.py's layer path): the 1x1 projections, recomputed in backward, and
  their gradients, 12 matrix products of C_in x C_out per pixel, on tensor cores; and the traffic
  of every pass over a (C, H, W) tensor listed in PASSES: the layer path computes q, k, v and
  their gradients in float32 (4 bytes), the model's activations are bf16 (2 bytes).
- A 3x3 convolution of the same width for comparison: 3 x 2 x 9 C_in C_out FLOPs per pixel on
  tensor cores, and its activations read and written in bf16.
A phase's bound is the larger of its FLOPs over the unit's peak and its bytes over HBM's; phases
run one after the other, so a layer's bound is their sum.

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

RESULTS = Path(__file__).parent / "results"

# Public peak figures (NVIDIA's data sheets, SXM parts): dense BF16 tensor-core FLOP/s, FP32
# FLOP/s of the CUDA cores, HBM bytes/s.
DEVICES = {
    "H100 SXM": {"tensor": 989e12, "fp32": 66.9e12, "hbm": 3.35e12},
    "H200 SXM": {"tensor": 989e12, "fp32": 66.9e12, "hbm": 4.8e12},
}

KERNEL_FLOPS_PER_CHANNEL = 8 + 7 + 16 + 10  # per pixel, head, offset and head channel, forward + backward

# Bytes per channel and pixel of each pass over a (C, H, W) tensor in the layer path (fused.py), forward then
# backward: (what, bytes read, bytes written).
PASSES = [
    ("x to float32", 2, 4), ("q, k, v projections", 3 * 4, 3 * 4), ("kernel reads q, k, v; writes out", 3 * 4, 4),
    ("out to bf16", 4, 2),
    ("grad_out to float32", 2, 4), ("q, k, v recomputed", 3 * 4, 3 * 4), ("query kernel", 4 * 4, 4),
    ("key kernel", 4 * 4, 2 * 4), ("grad_x from the three gradients", 3 * 4 + 4, 4),
    ("weight gradients read the gradients and x", 3 * 4 + 3 * 4, 0), ("grad_x to bf16", 4, 2),
]
PER_PIXEL_HEAD_BYTES = 4 * (1 + 1 + 2 + 1)  # lse written, read by both backward kernels; delta written and read
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


def _bound(flops: float, peak: float, nbytes: float, device: dict) -> float:
    return max(flops / peak, nbytes / device["hbm"])


def attention_layer(layer: Layer, device: dict) -> dict:
    head_dim = layer.out_channels // layer.heads
    kernel_flops = layer.pixels * layer.heads * layer.kernel_size**2 * head_dim * KERNEL_FLOPS_PER_CHANNEL
    kernel_passes = ("kernel reads q, k, v; writes out", "query kernel", "key kernel")
    channel_pixels = layer.out_channels * layer.pixels
    kernel_bytes = sum(r + w for name, r, w in PASSES if name in kernel_passes) * channel_pixels
    kernel_bytes += PER_PIXEL_HEAD_BYTES * layer.pixels * layer.heads
    rest_bytes = sum(r + w for name, r, w in PASSES if name not in kernel_passes) * channel_pixels
    rest_flops = 12 * 2 * layer.in_channels * layer.out_channels * layer.pixels
    kernel_time = _bound(kernel_flops, device["fp32"], kernel_bytes, device)
    rest_time = _bound(rest_flops, device["tensor"], rest_bytes, device)
    return {"flops": kernel_flops + rest_flops, "bytes": kernel_bytes + rest_bytes,
            "kernel_flops": kernel_flops, "kernel_bytes": kernel_bytes,
            "kernel_compute_s": kernel_flops / device["fp32"], "kernel_memory_s": kernel_bytes / device["hbm"],
            "time_s": kernel_time + rest_time}


def conv_layer(layer: Layer, device: dict) -> dict:
    pixels = layer.pixels // layer.stride**2
    flops = 3 * 2 * 9 * layer.in_channels * layer.out_channels * pixels
    nbytes = CONV_BYTES * layer.out_channels * pixels
    return {"flops": flops, "bytes": nbytes, "time_s": _bound(flops, device["tensor"], nbytes, device)}


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
        print(f"{'layer (B, C, H, W), k 7, 8 heads':34} {'GFLOP':>7} {'GB':>6} {'kernel compute':>15} "
              f"{'kernel memory':>14} {'layer bound':>12} {'3x3 conv':>9} {'ratio':>6}")
        rows = []
        for layer in (Layer(64, 64, 64, 56, 56), Layer(64, 256, 256, 14, 14)):
            attention, conv = attention_layer(layer, device), conv_layer(layer, device)
            shape = f"({layer.batch}, {layer.out_channels}, {layer.height}, {layer.width})"
            print(f"{shape:34} {attention['flops'] / 1e9:7.1f} {attention['bytes'] / 1e9:6.2f} "
                  f"{attention['kernel_compute_s'] * 1e3:12.3f} ms {attention['kernel_memory_s'] * 1e3:11.3f} ms "
                  f"{attention['time_s'] * 1e3:9.3f} ms {conv['time_s'] * 1e3:6.3f} ms "
                  f"{attention['time_s'] / conv['time_s']:6.1f}")
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
