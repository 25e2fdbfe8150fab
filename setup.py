"""Build darex_ext._C: C++ CPU kernels always, CUDA kernels when a CUDA toolchain and a CUDA
build of torch are present (DAREX_FORCE_CUDA=1 / DAREX_SKIP_CUDA=1 override the detection).

Never decided by torch.cuda.is_available(): build machines usually have no GPU.
"""

from __future__ import annotations

import glob
import os
import re
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))

# The one default list of CUDA targets; CMakeLists.txt reads this line (keep it one literal).
# Machine code for T4 (7.5), A100/A10/RTX 30-40 (8.0 runs on 8.6/8.9), H100/H200 (9.0),
# B200/GB200 (10.0, runs on 10.3) and RTX 50 / RTX PRO (12.0), plus compute_120 PTX that the driver
# compiles for anything newer: without PTX a new GPU gets "no kernel image is available".
# torch 2.14's CUDA 13 wheels cover the same GPUs (their list adds 8.6); nvcc 13 starts at 7.5.
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0;10.0;12.0+PTX"


def _version() -> str:
    text = open(os.path.join(ROOT, "darex_ext", "_version.py"), encoding="utf-8").read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _want_cuda() -> bool:
    if _flag("DAREX_SKIP_CUDA"):
        return False
    if _flag("DAREX_FORCE_CUDA"):
        return True
    return cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None


def _cuda_include_dirs() -> list[str]:
    # ATen headers pull in cuBLAS/cuSPARSE headers that a bare CUDA toolkit may lack; torch's
    # pip wheels ship them under nvidia/*/include.
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def build_extension():
    version = _version()
    with_cuda = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    define_macros = [
        ("DAREX_VERSION", f'"{version}"'),
        ("DAREX_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    # No -std: torch.utils.cpp_extension picks the standard its headers need (C++20 from 2.14).
    # -ffp-contract=off: the element math must not be fused into FMAs, so CPU == CUDA == reference.
    cxx = ["-O3", "-g0", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-fopenmp"]
    if sys.platform == "darwin":
        cxx = [f for f in cxx if f != "-g0"]
    extra = {"cxx": cxx}
    ext_cls = cpp_extension.CppExtension
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("DAREX_WITH_CUDA", "1"))
        extra["nvcc"] = ["-O3", "--fmad=false", "-lineinfo",
                         "--expt-relaxed-constexpr"]
        ext_cls = cpp_extension.CUDAExtension
    return ext_cls(
        name="darex_ext._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")] + (_cuda_include_dirs() if with_cuda else []),
        define_macros=define_macros,
        extra_compile_args=extra,
    )


setup(
    version=_version(),
    packages=find_packages(include=["darex_ext", "darex_ext.*"]),
    ext_modules=[build_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
