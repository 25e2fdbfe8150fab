"""Loads the compiled extension once (registering torch.ops.darex.*) and reports how it was built.

A failure to load becomes one clear ImportError naming the torch version the build needs.
"""

from __future__ import annotations

import torch  # noqa: F401  (must come first: _C links against torch's libraries and libgomp)

from .._version import __version__

try:
    from .. import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"darex_ext {__version__}: the compiled extension darex_ext._C failed to load with "
        f"torch {torch.__version__} ({exc}). It must be built against the installed torch: "
        "reinstall with `pip install --no-build-isolation .` in this environment."
    ) from exc

_built_for = _C.build_info()["torch_version"]
if _built_for.split("+")[0] != torch.__version__.split("+")[0]:
    raise ImportError(
        f"darex_ext._C was built for torch {_built_for} but torch {torch.__version__} is "
        "installed; rebuild with `pip install --no-build-isolation .`."
    )

__all__ = ["_C", "cuda_built", "build_info"]


def cuda_built() -> bool:
    """True if the installed extension was compiled with CUDA kernels."""
    return bool(_C.cuda_built())


def build_info() -> dict:
    """Versions and features the extension was built with (torch version, CUDA, CPU ISA)."""
    return dict(_C.build_info())
