from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

import darex_ext

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HAS_CUDA = torch.cuda.is_available() and darex_ext.cuda_built()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """benchmarks/<name>.py imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow-marked tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reseed():
    # Fresh but reproducible data in every test (the failing seed is in the test id's order).
    torch.manual_seed(1234)
    random.seed(1234)
    yield


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param


def randn(*shape, dtype=torch.float32, device="cpu"):
    """Random normal data with no zeros (a zero hides a wrongly dropped element)."""
    x = torch.randn(tuple(shape), dtype=torch.float64, device=device)
    x = torch.where(x == 0, torch.full_like(x, 0.5), x)
    return x.to(dtype)
