// Schemas of the bitmask storage format (compressed-tensors' sparse-bitmask: one bit per element,
// then the nonzero values in row order). Kernels: cpu/bitmask_kernel.cpp, cuda/bitmask_kernel.cu;
// wrappers and fakes: darex_ext/ops/bitmask.py; reference: darex_ext/reference/bitmask.py.
//
// The 2-D view and the bitmask_scatter_ contract (it validates every input before writing) are
// those of every storage format: see ops/storage_args.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  // (values, bitmask uint8 [rows, ceil(cols / 8)], row_offsets int64 [rows]); zeros are dropped.
  m.def("bitmask_pack(Tensor dense) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bitmask_scatter_(Tensor(a!) out, Tensor values, Tensor bitmask, Tensor row_offsets, "
      "float alpha, bool accumulate) -> ()");
}
