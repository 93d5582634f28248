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
from sasa_lightning.nn.backends import Call, triton_attention
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
def test_the_largest_head_dim_and_window_match_the_reference():
    """Head dim 64 (a tile of 2 x 8 pixels) and an 11 x 11 window, wider than the 5 x 9 image."""
    inputs = [t.to(device()) for t in make_inputs(1, 1, 64, 5, 9, 11)]
    inputs = [t.detach().requires_grad_() for t in inputs]
    expected = forward_backward(lambda *t: functional.local_attention(*t, 11, "mask", backend="reference"), inputs)
    got = forward_backward(lambda *t: functional.local_attention(*t, 11, "mask", backend="triton"), inputs)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


@runs_here
def test_the_layer_under_bf16_autocast():
    from sasa_lightning.nn import LocalSelfAttention2d

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


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90(tmp_path):
    """benchmarks/triton_compile.py, as `sasa bench triton-compile` runs it: Triton compiles each
    variant the launchers can ask for to PTX and a cubin for sm_90, which ptxas then reports on."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compile.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "triton_compile.py"), "--out", str(out)],
                            capture_output=True, text=True, env=env, cwd=ROOT / "benchmarks", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = len(triton_attention.kernel_variants())
    assert result.stdout.strip().splitlines()[-1] == f"compiled {expected} kernels for sm_90"
    kernels = json.loads(out.read_text())["kernels"]
    assert {k["kernel"] for k in kernels} == {"forward_kernel", "backward_query_kernel", "backward_key_kernel"}
    assert {k["dtype"] for k in kernels} == {"float16", "bfloat16", "float32", "float64"}
    assert all(0 < k["shared_bytes"] <= SM90_SHARED_MEMORY and k["registers"] for k in kernels)


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
        cells = [f"{a['flops'] / 1e9:.1f} G", f"{a['bytes'] / 1e9:.2f} GB", f"{a['kernel_compute_s'] * 1e3:.3f} ms",
                 f"{a['kernel_memory_s'] * 1e3:.3f} / {b['kernel_memory_s'] * 1e3:.3f} ms",
                 f"{a['time_s'] * 1e3:.2f} / {b['time_s'] * 1e3:.2f} ms", ratio]
        row = next(line for line in readme.splitlines() if line.startswith(f"| {row_h100['layer'][1:-1]} |"))
        assert [cell for cell in cells if cell not in row] == [], row
    steps = [h100["training_step"], h200["training_step"]]
    for figure in (f"{steps[0]['attention_s'] * 1e3:.1f} / {steps[1]['attention_s'] * 1e3:.1f} ms",
                   f"{steps[0]['delta_s'] * 1e3:.1f} / {steps[1]['delta_s'] * 1e3:.1f} ms",
                   f"{steps[0]['break_even_resnet50_images_per_s']:,.0f} / {steps[1]['break_even_resnet50_images_per_s']:,.0f}"):
        assert figure in " ".join(readme.split()), figure
