"""The triton backend beyond the float64 equivalence matrix of test_operator.py and test_layer.py
(which it runs under Triton's interpreter here): the dtypes it takes as they come, its largest
shapes, and every kernel variant compiled for sm_90 (H100/H200) without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sasa_lightning.nn import functional
from sasa_lightning.nn import LocalSelfAttention2d
from sasa_lightning.nn.backends import Call, triton_attention, triton_launch, triton_layer
from test_operator import forward_backward, make_inputs

ROOT = Path(__file__).resolve().parents[1]
SM90_SHARED_MEMORY = 227 * 1024  # bytes a block may use on H100/H200


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


# On a GPU, or under Triton's interpreter on CPU (tests/conftest.py sets it when there is no GPU).
runs_here = pytest.mark.skipif(
    triton_attention.can_run(Call(torch.device(device()), torch.float32, 8, 3, True)) is not None,
    reason="the triton backend cannot run here")


@runs_here
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_half_precision_inputs_are_taken_as_they_come(dtype):
    """bf16 and fp16 go into the kernels unconverted and come back in their dtype, the sums in
    float32: against the float64 reference within the inputs' own rounding."""
    inputs = [t.detach().to(device()) for t in make_inputs(2, 2, 16, 6, 9, 5)]
    expected = forward_backward(lambda *t: functional.local_attention(*t, 5, backend="reference"),
                                [t.requires_grad_() for t in inputs])
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    got = forward_backward(lambda *t: functional.local_attention(*t, 5, backend="triton"), low)
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1:])
    tolerance = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float32: 1e-5}[dtype]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=tolerance, atol=tolerance * e.abs().max().item())


@runs_here
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_the_largest_head_dim_and_window_of_each_dtype_match_the_reference(dtype, tolerance):
    """Head dim 64 and the largest window the dtype takes (float64 7, float32 11, bf16 15: the
    halo's operands must fit a block's shared memory), wider than the 5 x 9 image."""
    kernel_size = triton_launch.MAX_KERNEL_SIZE[dtype]
    inputs = [t.detach().to(device()).requires_grad_() for t in make_inputs(1, 2, 64, 5, 9, kernel_size)]
    expected = forward_backward(lambda *t: functional.local_attention(*t, kernel_size, "mask", backend="reference"),
                                inputs)
    low = [t.detach().to(dtype).requires_grad_() for t in inputs]
    got = forward_backward(lambda *t: functional.local_attention(*t, kernel_size, "mask", backend="triton"), low)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=tolerance, atol=tolerance * e.abs().max().item())


@runs_here
def test_the_layer_under_bf16_autocast():
    layer = LocalSelfAttention2d(16, 16, kernel_size=3, heads=2, backend="triton").to(device())
    x = torch.randn(2, 16, 6, 6, device=device(), requires_grad=True)
    with torch.autocast(device(), dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    reference = LocalSelfAttention2d(16, 16, kernel_size=3, heads=2, backend="reference").to(device())
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out.float(), reference(x).detach(), rtol=2e-2, atol=2e-2)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_gpu_runs_the_benchmark_layers_in_one_or_two_chunks():
    """The layer's chunks on a GPU are sized by bytes (triton_layer.CHUNK_BYTES), not by the CPU's
    cache-sized element count: bf16 (64, 64, 56, 56) in two, (64, 256, 14, 14) in one, and every
    image in exactly one chunk."""
    def chunks(batch, channels, height, width, parts=3):
        per_image = (parts + 1) * channels * height * width * 2
        return triton_layer.plan_images(batch, per_image)

    assert [(c.start, c.stop) for c in chunks(64, 64, 56, 56)] == [(0, 32), (32, 64)]
    assert [(c.start, c.stop) for c in chunks(64, 256, 14, 14)] == [(0, 64)]
    for batch, channels, size in [(128, 128, 56), (1, 512, 512), (7, 64, 56)]:
        planned = chunks(batch, channels, size, size)
        assert [c.start for c in planned] == [0] + [c.stop for c in planned[:-1]] and planned[-1].stop == batch


@runs_here
@pytest.mark.parametrize("positional,logits", [("relative", "qk+qr"), ("absolute", "qk+qr"), ("relative", "qr")])
def test_the_layer_in_chunks_of_one_image_matches_one_chunk(positional, logits, monkeypatch):
    """The gradients summed over chunks (weights, key bias, embeddings) equal one chunk's."""
    layer = LocalSelfAttention2d(6, 8, kernel_size=3, heads=2, positional=positional, logits=logits,
                                 backend="triton").double().to(device())
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64, device=device())

    def grads():
        inputs = x.clone().requires_grad_()
        layer.zero_grad()
        out = layer(inputs)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out))
        return [out.detach(), inputs.grad] + [p.grad.clone() for p in layer.parameters()]

    whole = grads()
    monkeypatch.setattr(triton_layer, "CHUNK_BYTES", 1)
    for got, expected in zip(grads(), whole):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# What one layer's training step may launch: the casts to bf16 (x, three weights, two
# embeddings), the stacked weights, one projection product and the forward kernel; in backward
# the stacked weights and the projection again, the two kernel passes, two sums for the
# embeddings' gradients, two products for grad_x, three for the weights', and the casts of the
# gradients back to float32.
LAUNCHES_PER_STEP = 26


class _CountLaunches:
    """Counts the operators of a run that launch a kernel on a GPU (not views, allocations or
    no-op casts), the triton kernels among them, inside the layer's custom ops too."""

    def __init__(self, monkeypatch):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.names: list[str] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not (func.is_view or func.namespace == "sasa" or func.__name__.split(".")[0] in _NO_LAUNCH):
                    counter.names.append(func.__name__)
                return out

        self.mode = Mode
        run = triton_launch._Launch.run

        def counted_run(launch, kernel, *args):
            self.names.append(kernel.__name__)
            with torch.utils._python_dispatch._disable_current_modes():  # the interpreter's own copies
                return run(launch, kernel, *args)

        monkeypatch.setattr(triton_launch._Launch, "run", counted_run)
        for name in ("layer_forward", "layer_backward"):  # the custom ops' insides, which the outer mode cannot see
            inner = getattr(triton_layer, name)

            def counted(*args, _inner=inner, **kwargs):
                with self.mode():
                    return _inner(*args, **kwargs)

            monkeypatch.setattr(triton_layer, name, counted)


_NO_LAUNCH = {"empty", "empty_strided", "empty_like", "new_empty", "detach", "alias", "set_", "resolve_conj",
              "resolve_neg", "lift_fresh"}


@pytest.mark.slow
@runs_here
def test_one_layer_step_launches_a_handful_of_kernels(monkeypatch):
    """Forward and backward of a layer under bf16 autocast, counted by the operators that reach
    the dispatcher and the triton launches (one kernel each on a GPU)."""
    layer = LocalSelfAttention2d(16, 16, kernel_size=7, heads=2, backend="triton").to(device())
    # Channels-last, as the layers before it leave a model's activations (the layer's own output is).
    x = torch.randn(2, 16, 9, 11, device=device()).to(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(2, 16, 9, 11, device=device(), dtype=torch.bfloat16).to(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device(), dtype=torch.bfloat16):
            out = layer(x)
        out.backward(grad_out)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    step()  # the first forward also compiles the backward kernels on a GPU
    counter = _CountLaunches(monkeypatch)
    with counter.mode():
        step()
    names = counter.names
    assert names.count("forward_kernel") == 1 and names.count("backward_query_kernel") == 1
    assert names.count("backward_key_kernel") == 1
    assert len(names) <= LAUNCHES_PER_STEP, "\n".join(names)


@pytest.mark.requires_cuda
def test_a_training_step_is_captured_in_a_cuda_graph_and_replays_as_eager():
    """Nothing in the layer waits for the host, so torch.cuda.graph captures forward and backward
    (as torch.compile's reduce-overhead mode does); the replay's gradients equal an eager step's."""
    import copy

    layer = LocalSelfAttention2d(32, 32, kernel_size=7, heads=4, backend="triton").cuda()
    eager = copy.deepcopy(layer)
    x = torch.randn(4, 32, 20, 24, device="cuda", requires_grad=True)

    def step(module, inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(inputs)
        out.float().square().sum().backward()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-ups compile the kernels, outside the capture
        for _ in range(2):
            step(layer, x)
            x.grad = None
            layer.zero_grad(set_to_none=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(layer, x)
    fresh = torch.randn_like(x)
    x.data.copy_(fresh)
    graph.replay()
    inputs = fresh.clone().requires_grad_()
    expected = step(eager, inputs)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, inputs.grad)
    for got, want in zip(layer.parameters(), eager.parameters()):
        torch.testing.assert_close(got.grad, want.grad)


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90(tmp_path):
    """benchmarks/triton_compile.py, as `sasa bench triton-compile` runs it: Triton compiles each
    variant the launchers can ask for to PTX and a cubin for sm_90, which ptxas then reports on."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compile.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"), "--out", str(out)],
                            capture_output=True, text=True, env=env, cwd=ROOT / "benchmarks", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = len(triton_launch.kernel_variants())
    assert result.stdout.strip().splitlines()[-1] == f"compiled {expected} kernels for sm_90"
    kernels = json.loads(out.read_text())["kernels"]
    assert {k["kernel"] for k in kernels} == {"forward_kernel", "backward_query_kernel", "backward_key_kernel"}
    assert {k["dtype"] for k in kernels} == {"float16", "bfloat16", "float32", "float64"}
    assert all(0 < k["shared_bytes"] <= SM90_SHARED_MEMORY and k["registers"] for k in kernels)
    # Every product on tensor cores: mma.sync (or Hopper's wgmma) in the PTX of every bf16 and
    # fp16 variant, head dims 8 to 64 alike (padded to 16), and of float32's three-TF32 products.
    no_tensor_cores = [k for k in kernels if k["dtype"] != "float64" and k["mma"] + k["wgmma"] == 0]
    assert no_tensor_cores == []


def test_the_benchmarks_readme_shows_the_performance_model_as_the_script_computes_it(tmp_path):
    """benchmarks/README.md's performance-model table and step figures are benchmarks/performance_model.py's output."""
    out = tmp_path / "model.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "performance_model.py"), "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT / "benchmarks", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    devices = json.loads(out.read_text())["devices"]
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    h100, h200 = devices["H100 SXM"], devices["H200 SXM"]
    for row_h100, row_h200 in zip(h100["layers"], h200["layers"]):
        a, b = row_h100["attention"], row_h200["attention"]
        ratio = f"{a['time_s'] / row_h100['conv3x3']['time_s']:.1f} / {b['time_s'] / row_h200['conv3x3']['time_s']:.1f}"
        cells = [f"{a['flops'] / 1e9:.1f} G", f"{a['bytes'] / 1e9:.2f} GB", f"{a['kernel_tensor_s'] * 1e3:.3f} ms",
                 f"{a['kernel_cuda_cores_s'] * 1e3:.3f} ms",
                 f"{a['kernel_memory_s'] * 1e3:.3f} / {b['kernel_memory_s'] * 1e3:.3f} ms",
                 f"{a['time_s'] * 1e3:.2f} / {b['time_s'] * 1e3:.2f} ms", ratio]
        row = next(line for line in readme.splitlines() if line.startswith(f"| {row_h100['layer'][1:-1]} |"))
        assert [cell for cell in cells if cell not in row] == [], row
    steps = [h100["training_step"], h200["training_step"]]
    for figure in (f"{steps[0]['attention_s'] * 1e3:.1f} / {steps[1]['attention_s'] * 1e3:.1f} ms",
                   f"{steps[0]['delta_s'] * 1e3:.1f} / {steps[1]['delta_s'] * 1e3:.1f} ms",
                   f"{steps[0]['break_even_resnet50_images_per_s']:,.0f} / {steps[1]['break_even_resnet50_images_per_s']:,.0f}"):
        assert figure in " ".join(readme.split()), figure
