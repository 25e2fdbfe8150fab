// Schemas of the seeded storage format: only the kept values are stored, the mask is recomputed
// from (seed, p, offset) by the mask spec `mask_spec` (1 = philox, 2 = skip, the default; see
// ops/prune_args.h). Kernels: cpu/seeded_kernel.cpp, cuda/seeded_kernel.cu; wrappers and
// fakes: darex_ext/ops/seeded.py; reference: darex_ext/reference/seeded.py.
//
// The 2-D view and the seeded_scatter_ contract are those of every storage format (see
// ops/storage_args.h).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  // Kept values of prune_(delta, p, q, seed, offset) in flat order: drop, rescale and compact.
  m.def(
      "seeded_pack(Tensor delta, float p, int seed, int offset, Tensor? q_rows, float q, "
      "int mask_spec=2) -> Tensor");
  // Number of elements the mask of (seed, p, offset) keeps among like.numel(): int64 0-d tensor.
  m.def("keep_count(Tensor like, float p, int seed, int offset, int mask_spec=2) -> Tensor");
  m.def(
      "seeded_scatter_(Tensor(a!) out, Tensor values, float p, int seed, int offset, float alpha, "
      "bool accumulate, int mask_spec=2) -> ()");
}
