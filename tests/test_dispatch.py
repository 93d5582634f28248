"""How a call finds its backend: capability, the per-device priority list, fallback, overrides."""

import importlib.util
import logging
import warnings

import pytest
import torch

from sasa_lightning.nn import functional
from sasa_lightning.nn.backends import BACKENDS, PRIORITY, Call
from sasa_lightning.nn.backends.errors import BackendUnavailable, KernelFailed
from test_operator import make_inputs


def call(device="cpu", dtype=torch.float32, head_dim=16, kernel_size=7, needs_grad=True):
    return Call(torch.device(device), dtype, head_dim, kernel_size, needs_grad)


@pytest.fixture
def fresh_failures(monkeypatch):
    monkeypatch.setattr(functional, "_FAILED", {})


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_module_has_the_contract_s_functions_with_its_parameters(name):
    """contract.Backend, read against each module: the same names, keyword-only where it says so."""
    import inspect

    from sasa_lightning.nn.backends.contract import Backend

    module = BACKENDS[name]
    for function in ("can_run", "local_attention", "local_self_attention"):
        promised = list(inspect.signature(getattr(Backend, function)).parameters.values())[1:]  # less self
        given = inspect.signature(getattr(module, function)).parameters.values()
        assert inspect.isfunction(getattr(module, function)), f"{name}.{function} is not a def"
        assert [(p.name, p.kind) for p in given] == [(p.name, p.kind) for p in promised], f"{name}.{function}"


def test_every_backend_says_what_it_can_run():
    assert all(callable(module.can_run) for module in BACKENDS.values())
    for device_type, names in PRIORITY.items():
        assert names[-1] == "chunked", f"{device_type}: the last backend must run anything"
        assert BACKENDS[names[-1]].can_run(call(device="meta")) is None


def test_auto_takes_the_capable_backends_of_the_device_in_order(monkeypatch):
    monkeypatch.delenv("SASA_ATTENTION_BACKEND", raising=False)
    assert functional.candidates("auto", call("cpu")) == ["cpu", "chunked"]
    # can_run looks at the call only, so CUDA calls are planned without a GPU.
    if importlib.util.find_spec("triton") is not None:
        assert functional.candidates("auto", call("cuda", torch.bfloat16)) == ["triton", "flex", "chunked"]
    assert functional.candidates("auto", call("meta")) == ["chunked"]


def test_auto_skips_a_backend_that_cannot_run_the_call_and_logs_why(monkeypatch, caplog):
    monkeypatch.delenv("SASA_ATTENTION_BACKEND", raising=False)
    with caplog.at_level(logging.DEBUG, logger="sasa_lightning.nn.functional"):
        # flex (which takes them) when triton is installed, as the pinned torch brings it.
        assert functional.candidates("auto", call("cuda", head_dim=128)) == ["flex", "chunked"]
        assert functional.candidates("auto", call("cuda", kernel_size=17)) == ["flex", "chunked"]
        assert functional.candidates("auto", call("cuda", dtype=torch.int8)) == ["flex", "chunked"]
    messages = caplog.text
    assert "'triton' skipped: the triton backend takes head dims up to 64, not 128" in messages
    assert "windows up to 11 in torch.float32, not 17" in messages
    assert "not torch.int8" in messages


def test_a_named_backend_that_cannot_run_the_call_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, rows, cols = make_inputs(1, 2, 4, 5, 5, 3)
    with pytest.raises(BackendUnavailable, match="backend 'triton' cannot run here: the triton backend runs on CUDA"):
        functional.local_attention(q, k, v, rows, cols, 3, backend="triton")
    with pytest.raises(BackendUnavailable, match="flex_attention has no backward on CPU"):
        functional.local_attention(q, k, v, rows, cols, 3, backend="flex")


def test_the_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("SASA_ATTENTION_BACKEND", "chunked")
    assert functional.candidates("auto", call("cpu")) == ["chunked"]
    assert functional.candidates("reference", call("cpu")) == ["reference"]  # a layer's own choice stands


def _failing(monkeypatch, name):
    def fail(**kwargs):
        fail.calls += 1
        raise KernelFailed(f"the {name} backend's kernel did not build: no compiler")

    fail.calls = 0
    monkeypatch.setattr(BACKENDS[name], "local_attention", fail)
    return fail


def test_a_kernel_that_fails_to_build_warns_once_and_auto_falls_back(monkeypatch, fresh_failures):
    monkeypatch.delenv("SASA_ATTENTION_BACKEND", raising=False)
    failing = _failing(monkeypatch, "cpu")
    inputs = make_inputs(1, 2, 4, 5, 6, 3)
    expected = functional.local_attention(*inputs, 3, backend="reference")
    with pytest.warns(UserWarning, match="the cpu backend's kernel did not build: no compiler; local attention falls back"):
        got = functional.local_attention(*inputs, 3)
    torch.testing.assert_close(got, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next call goes straight to chunked
        torch.testing.assert_close(functional.local_attention(*inputs, 3), expected)
    assert failing.calls == 1
    assert functional.candidates("auto", call("cpu")) == ["chunked"]


def test_a_named_backend_whose_kernel_fails_raises(monkeypatch, fresh_failures):
    _failing(monkeypatch, "cpu")
    with pytest.raises(KernelFailed, match="did not build"):
        functional.local_attention(*make_inputs(1, 2, 4, 5, 6, 3), 3, backend="cpu")


def test_without_triton_a_gpu_falls_back_to_chunked(monkeypatch):
    """flex compiles to Triton on CUDA: without triton neither it nor the triton backend is
    planned, and auto takes chunked (with tiles sized for a GPU)."""
    from sasa_lightning.nn.backends import flex

    monkeypatch.delenv("SASA_ATTENTION_BACKEND", raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(flex.importlib.util, "find_spec", lambda name: None if name == "triton" else find_spec(name))
    assert functional.candidates("auto", call("cuda", head_dim=128)) == ["chunked"]
    assert "triton is not installed" in flex.can_run(call("cuda"))
