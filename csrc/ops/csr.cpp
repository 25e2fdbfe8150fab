// Schemas of the CSR storage format (row pointers, narrowest column-index dtype, values).
// Kernels: cpu/csr_kernel.cpp, cuda/csr_kernel.cu; wrappers and fakes: darex_ext/ops/csr.py;
// reference: darex_ext/reference/csr.py.
//
// The 2-D view and the csr_scatter_ contract (it validates every input before writing) are
// those of every storage format: see ops/storage_args.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  // (crow int64 [rows + 1], col uint8/uint16/uint32/int64 [nnz], values [nnz]); zeros dropped.
  m.def("csr_pack(Tensor dense) -> (Tensor, Tensor, Tensor)");
  m.def(
      "csr_scatter_(Tensor(a!) out, Tensor crow, Tensor col, Tensor values, float alpha, "
      "bool accumulate) -> ()");
}
