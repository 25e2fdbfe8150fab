// Entry checks shared by the CPU and CUDA kernels of the magnitude-rank mask (ops/rank_mask.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <utility>

#include "prune_args.h"

namespace darex {

// (rows, cols) of the ranked rows; the column of an element must fit the kernels' 32-bit index.
inline std::pair<int64_t, int64_t> check_rank_mask_args(const at::Tensor& delta, double p_lo, double p_hi,
                                                        int64_t offset) {
  check_values_tensor(delta, "delta");
  TORCH_CHECK_VALUE(p_lo >= 0.0 && p_lo <= 1.0, "p_lo must be in [0, 1], got ", p_lo);
  TORCH_CHECK_VALUE(p_hi >= 0.0 && p_hi <= 1.0, "p_hi must be in [0, 1], got ", p_hi);
  check_offset(offset);
  TORCH_CHECK_VALUE(delta.dim() >= 1, "the rank mask needs a tensor with at least one dimension");
  const int64_t rows = delta.size(0);
  int64_t cols = 1;
  for (int64_t d = 1; d < delta.dim(); ++d) cols *= delta.size(d);
  TORCH_CHECK_VALUE(cols <= std::numeric_limits<uint32_t>::max(), "rows of more than 2^32 - 1 elements are not "
                    "supported, got ", cols);
  return {rows, cols};
}

inline void raise_on_rank_nan(int64_t nans) {
  TORCH_CHECK_VALUE(nans == 0, "delta contains ", nans, " NaN value(s); the rank mask needs ordered magnitudes");
}

}  // namespace darex
