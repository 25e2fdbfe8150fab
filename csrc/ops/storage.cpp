// Schemas of the sparse storage ops (darex_ext.storage). Kernels: cpu/{seeded,bitmask,csr}_kernel.cpp,
// cuda/{seeded,bitmask,csr}_kernel.cu; fakes: darex_ext/_fake.py; wrappers: darex_ext/storage/.
//
// Every format works on the 2-D view of a tensor (rows = size(0), cols = the other dims
// flattened; 0-d and 1-d tensors are one row). The *_scatter_ ops decode into `out`:
// accumulate=False writes every element (kept ones the stored value, the rest 0; `alpha` unused),
// accumulate=True adds alpha * value in float32 (float64 for float64) with one rounding to the
// dtype, touching only kept elements. They validate all of their inputs before writing and raise
// ValueError on any inconsistency, so an untrusted file can never crash or write out of bounds.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  // Kept values of prune_(delta, p, q, seed, offset) in flat order: drop, rescale and compact.
  m.def("seeded_pack(Tensor delta, float p, int seed, int offset, Tensor? q_rows, float q) -> Tensor");
  // Number of elements the mask of (seed, p, offset) keeps among like.numel(): int64 0-d tensor.
  m.def("keep_count(Tensor like, float p, int seed, int offset) -> Tensor");
  m.def(
      "seeded_scatter_(Tensor(a!) out, Tensor values, float p, int seed, int offset, float alpha, "
      "bool accumulate) -> ()");
  // (values, bitmask uint8 [rows, ceil(cols / 8)], row_offsets int64 [rows]); zeros are dropped.
  m.def("bitmask_pack(Tensor dense) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bitmask_scatter_(Tensor(a!) out, Tensor values, Tensor bitmask, Tensor row_offsets, "
      "float alpha, bool accumulate) -> ()");
  // (crow int64 [rows + 1], col uint8/uint16/uint32/int64 [nnz], values [nnz]); zeros dropped.
  m.def("csr_pack(Tensor dense) -> (Tensor, Tensor, Tensor)");
  m.def(
      "csr_scatter_(Tensor(a!) out, Tensor crow, Tensor col, Tensor values, float alpha, "
      "bool accumulate) -> ()");
}
