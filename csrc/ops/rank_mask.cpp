// Schema of the magnitude-rank mask (DELLA's MAGPRUNE keep test). Kernels:
// cpu/rank_mask_kernel.cpp, cuda/rank_mask_kernel.cu; wrapper and fake: darex_ext/ops/rank_mask.py;
// reference: darex_ext/reference/rank_mask.py; keep rule: common/rank_mask.h.
//
// `delta` is seen as [size(0), numel / size(0)] rows. In each row the elements are ranked by |x|
// (ascending; equal |x|, -0.0 included, by column) and the element of rank k is kept with
// probability p_lo + (p_hi - p_lo) * k / (cols - 1): kept iff word (offset + flat index) of the
// mask spec passes the drop threshold of one minus that probability. NaN is refused.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  m.def("magnitude_rank_mask(Tensor delta, float p_lo, float p_hi, int seed, int offset) -> Tensor");
}
