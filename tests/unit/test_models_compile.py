"""torch.compile(fullgraph=True) traces every registered model without graph breaks and changes no result."""

from __future__ import annotations

import shutil

import pytest
import torch

from meddenoise.models import build_model, list_models, mean_loss_over_heads

pytestmark = pytest.mark.slow

TINY_OPTIONS = {"unet": {"depth": 3}, "unetpp": {"depth": 3}, "dncnn": {"num_layers": 4}}


# Graph breaks are found by dynamo while tracing, before any backend runs, so `fullgraph=True` with the cheap
# aot_eager backend (which also traces the backward graph) checks every model; inductor's C++ code generation
# takes minutes per model on a shared CPU, so it is exercised once, on the smallest graph.
TRACE_BACKEND = "aot_eager"


def tiny_model(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, base_channels=8, **{**TINY_OPTIONS.get(name, {}), **options})


@pytest.mark.parametrize("name", list_models())
def test_compiled_model_matches_eager_in_eval_mode(name):
    torch._dynamo.reset()
    model = tiny_model(name).eval()
    compiled = torch.compile(model, backend=TRACE_BACKEND, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for height, width in [(32, 32), (30, 45)]:  # the second goes through the padding path
            noisy = torch.rand(2, 1, height, width)
            torch.testing.assert_close(compiled(noisy), model(noisy), rtol=1e-4, atol=1e-5)


def test_compiled_unetpp_trains_with_deep_supervision():
    torch._dynamo.reset()
    model = tiny_model("unetpp", deep_supervision=True).train()
    compiled = torch.compile(model, backend=TRACE_BACKEND, fullgraph=True, dynamic=False)
    noisy, clean = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    outputs = compiled(noisy)
    assert isinstance(outputs, list) and len(outputs) == 2
    mean_loss_over_heads(outputs, clean, torch.nn.functional.l1_loss).backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


HAS_C_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.skipif(not HAS_C_COMPILER, reason="inductor needs a C compiler")
def test_inductor_compiled_dncnn_matches_eager():
    torch._dynamo.reset()
    model = tiny_model("dncnn", num_layers=3).eval()
    compiled = torch.compile(model, backend="inductor", fullgraph=True, dynamic=False)
    noisy = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(noisy), model(noisy), rtol=1e-4, atol=1e-5)
