// Schema of structural (row / column) DARE. Kernels: cpu/structural_kernel.cpp,
// cuda/structural_kernel.cu; wrapper and fake: darex_ext/ops/structural.py; reference:
// darex_ext/reference/structural.py.
//
// A slice is every element whose index along `dim` is j (dim 0: row j; dim 1 of a matrix:
// column j). Slice j is kept iff word (offset + j) of the mask spec passes the threshold of p,
// i.e. keep_mask(slices, p, seed, offset, mask_spec)[j] (mask_spec: 1 = philox, 2 = skip, the
// default; see ops/prune_args.h); kept slices are scaled by 1/q, dropped slices
// become exactly 0. `offset` is the index of delta's first slice in a larger logical tensor.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  m.def(
      "structural_prune_(Tensor(a!) delta, float p, int dim, int seed, int offset, float q, "
      "int mask_spec=2) -> ()");
}
