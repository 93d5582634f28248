"""The fused kernels as torch.library ops: torch.library.opcheck on every op, and what the ops
are for: no graph breaks under torch.compile, compiled equal to eager, torch.export with a
dynamic batch size."""

import copy

import pytest
import torch

from sasa_lightning.models import create_model
from sasa_lightning.nn.backends import Call, triton_attention

# has keys, has relative embeddings, masked padding
OPTIONS = [(True, True, False), (False, True, True), (True, False, True)]
# Every option on the cpu kernel; the triton kernel, slow under Triton's interpreter, with all of
# them (the equivalence tests of test_operator.py and test_layer.py cover its options).
CASES = [("cpu", dtype, *options) for dtype in (torch.float32, torch.float64) for options in OPTIONS]
if triton_attention.can_run(Call(torch.device("cpu"), torch.float32, 8, 3, True)) is None:
    CASES.append(pytest.param("triton", torch.float32, True, True, False, marks=pytest.mark.slow))

def _attention_args(dtype, has_keys, has_rel, requires_grad=True):
    batch, heads, dim, height, width, kernel_size = 2, 2, 4, 5, 6, 3
    def make(*shape):
        return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)
    q, k, v = (make(batch, heads, dim, height, width) for _ in range(3))
    rel = [make(heads, kernel_size, dim // 2) for _ in range(2)] if has_rel else [None, None]
    return q, k if has_keys else None, v, *rel, kernel_size


def _layer_args(dtype, has_keys, has_rel, requires_grad=True):
    batch, in_channels, out_channels, heads, height, width, kernel_size = 2, 3, 8, 2, 5, 6, 3
    def make(*shape):
        return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)
    x = make(batch, in_channels, height, width)
    weights = [make(out_channels, in_channels) for _ in range(3)]
    key_bias = make(1, out_channels, height, width) if has_keys else None
    rel = [make(heads, kernel_size, out_channels // heads // 2) for _ in range(2)] if has_rel else [None, None]
    return x, weights[0], weights[1] if has_keys else None, weights[2], key_bias, *rel, kernel_size, heads


@pytest.mark.parametrize("kernel,dtype,has_keys,has_rel,mask", CASES)
def test_opcheck_local_attention(kernel, dtype, has_keys, has_rel, mask):
    args = _attention_args(dtype, has_keys, has_rel)
    torch.library.opcheck(torch.ops.sasa.local_attention_fwd, (*args, mask, kernel))
    q, k, v, rel_rows, rel_cols, kernel_size = _attention_args(dtype, has_keys, has_rel, requires_grad=False)
    out, lse = torch.ops.sasa.local_attention_fwd(q, k, v, rel_rows, rel_cols, kernel_size, mask, kernel)
    torch.library.opcheck(torch.ops.sasa.local_attention_bwd,
                          (torch.randn_like(out), q, k, v, rel_rows, rel_cols, lse, kernel_size, mask, kernel))


@pytest.mark.parametrize("kernel,dtype,has_keys,has_rel,mask", CASES)
def test_opcheck_local_self_attention(kernel, dtype, has_keys, has_rel, mask):
    args = _layer_args(dtype, has_keys, has_rel)
    torch.library.opcheck(torch.ops.sasa.local_self_attention_fwd, (*args, mask, kernel))
    args = _layer_args(dtype, has_keys, has_rel, requires_grad=False)
    out, lse = torch.ops.sasa.local_self_attention_fwd(*args, mask, kernel)
    for needs_grad_x in (True, False):
        torch.library.opcheck(torch.ops.sasa.local_self_attention_bwd,
                              (torch.randn_like(out), *args[:7], lse, *args[7:], mask, kernel, needs_grad_x))


def test_absent_gradients_are_none_and_present_ones_flow():
    """Through the registered autograd: no key weight or bias (q.r logits only), x not requiring grad."""
    x, query, _, value, _, rel_rows, rel_cols, kernel_size, heads = _layer_args(torch.float64, False, True)
    x = x.detach()
    out, _ = torch.ops.sasa.local_self_attention_fwd(x, query, None, value, None, rel_rows, rel_cols, kernel_size,
                                                     heads, False, "cpu")
    out.square().sum().backward()
    assert x.grad is None
    assert all(t.grad.abs().sum() > 0 for t in (query, value, rel_rows, rel_cols))


@pytest.mark.inductor
@pytest.mark.parametrize("name,options", [("sasa_resnet26", {}), ("sasa_resnet50", {}),
                                          ("sasa_resnet26", {"stem": "attention"})])
def test_dynamo_sees_whole_models_without_graph_breaks(name, options):
    model = create_model(name, num_classes=10, **options)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.inductor
def test_compiled_model_forward_and_backward_equal_eager():
    torch.manual_seed(0)
    eager = create_model("sasa_resnet26", num_classes=10, stem="attention")
    compiled = copy.deepcopy(eager)
    compiled.compile()
    images = torch.randn(2, 3, 64, 64)
    outputs = []
    for model in (eager, compiled):
        logits = model(images)
        logits.square().sum().backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
    for (name, got), expected in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-4 * expected.grad.abs().max().item(),
                                   msg=name)


@pytest.mark.inductor
def test_export_with_a_dynamic_batch_size():
    torch.manual_seed(0)
    model = create_model("sasa_resnet26", num_classes=10).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "sasa.local_self_attention_fwd.default" in ops
    for size in (1, 3):
        images = torch.randn(size, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(images), model(images), rtol=1e-5, atol=1e-5)

