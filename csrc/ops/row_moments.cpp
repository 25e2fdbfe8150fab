// Schema of row_moments, the one pass over a Linear's weight delta that analytic q (DAREx
// Algorithm 3, darex_ext/algorithms/analytic_q.py) needs. Kernels: cpu/row_moments_kernel.cpp,
// cuda/row_moments_kernel.cu; wrapper and fake: darex_ext/ops/row_moments.py; reference:
// darex_ext/reference/row_moments.py.
//
// With c_ij = delta_ij * x_j (never materialized) and, when `bias` is given, one more column
// c_i,cols = bias_i (an input fixed at 1):
//   S_i = sum_j c_ij,   Q_i = sum_j c_ij^2,   both float64 of shape [rows].
// Products and sums are float64 whatever delta's dtype: S is a signed sum over thousands of
// terms that cancel, and the grid search compares F(q) values of neighbouring q, so float32
// accumulation would move q by whole grid steps on long rows.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(darex, m) {
  m.def("row_moments(Tensor delta, Tensor x, Tensor? bias) -> (Tensor, Tensor)");
}
