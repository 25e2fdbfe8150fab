// Schemas of the exact top-k ops (radix select, no sort, no index tensors). Kernels:
// cpu/topk_kernel.cpp, cuda/topk_kernel.cu (registrations; the phases are in cpu/topk_*.h and
// cuda/topk_*.cuh); wrappers and fakes: darex_ext/ops/topk.py; reference:
// darex_ext/reference/topk.py.
//
// Selection keeps exactly `k` elements per slice (the whole tensor, or each row of a tensor seen
// as [size(0), numel / size(0)] when per_row); among equal scores at the cut the lower flat index
// wins. NaN scores are refused.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  m.def("topk_mask(Tensor scores, int k, bool largest, bool per_row) -> Tensor");
  // [threshold score as float64, count strictly beyond it, count equal to it that are taken]
  m.def("topk_threshold(Tensor scores, int k, bool largest) -> Tensor");
  // Keep the `keep` largest |x| (per tensor or per row), zero the rest, scale kept by 1/q.
  m.def("magnitude_prune_(Tensor(a!) delta, int keep, bool per_row, float? q) -> ()");
  // Per row i keep the `keep` largest |delta_ij| * act_norm_j, zero the rest, scale by 1/q.
  m.def("wanda_prune_(Tensor(a!) delta, Tensor act_norm, int keep, float? q) -> ()");
}
