"""What `DeltaBank.add` accepts, read into one shape: sparse deltas, dense tensors, layout.

- a delta directory written by ``darex prune --format seeded|bitmask|csr`` (its
  ``delta.safetensors``, and ``dense.safetensors`` for the tensors stored as they are), or that
  directory's ``delta.safetensors`` (the same rules as ``darex apply``: pipeline.apply.delta_paths);
- a mapping {tensor name: SparseDelta or Tensor} (a Tensor replaces the parameter, as a tensor of
  dense.safetensors does), e.g. a ``storage.load`` DeltaFile.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..storage import SparseDelta
from ..storage import load as load_deltas

__all__ = ["DeltaSource", "read_source"]


@dataclass
class DeltaSource:
    sparse: dict[str, SparseDelta]
    dense: dict[str, torch.Tensor]
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] | None = None  # the fine-tune's tensors
    origin: str = "mapping"
    side_dir: str | None = None
    extra: dict = field(default_factory=dict)


def _from_mapping(delta: Mapping) -> DeltaSource:
    sparse, dense = {}, {}
    for name, d in delta.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"delta: tensor names must be non-empty strings, got {name!r}")
        if isinstance(d, SparseDelta):
            sparse[name] = d
        elif isinstance(d, torch.Tensor):
            dense[name] = d.detach()
        else:
            raise TypeError(f"delta[{name!r}] must be a SparseDelta or a Tensor, got {type(d).__name__}")
    return DeltaSource(sparse, dense)


def _from_path(path: str) -> DeltaSource:
    from safetensors import safe_open

    from ..pipeline.apply import delta_paths
    from ..pipeline.writer import Layout

    delta_file, dense_file, side_dir = delta_paths(path)
    with load_deltas(delta_file) as deltas:
        sparse = {name: deltas[name] for name in deltas}
        layout_json = (deltas.metadata or {}).get("darex.layout")
    dense = {}
    if dense_file is not None:
        with safe_open(dense_file, framework="pt", device="cpu") as fh:
            for k in fh.keys():
                dense[k] = fh.get_tensor(k)
    layout = None
    if layout_json:
        layout = {n: (e.dtype, tuple(e.shape)) for n, e in Layout.from_json(layout_json).entries().items()}
    return DeltaSource(sparse, dense, layout, origin=path, side_dir=side_dir)


def read_source(delta) -> DeltaSource:
    if isinstance(delta, (str, os.PathLike)):
        return _from_path(os.fspath(delta))
    if isinstance(delta, Mapping):
        return _from_mapping(delta)
    raise TypeError("delta must be a delta directory or file (str / PathLike) or a mapping of "
                    f"name -> SparseDelta, got {type(delta).__name__}")
