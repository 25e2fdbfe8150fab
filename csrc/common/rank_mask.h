// The keep test of the magnitude-rank mask (ops/rank_mask.cpp), written once for CPU and CUDA so
// both keep the same elements (docs/mask_spec.md, "Rank mask").
//
// In a row of n elements, the element of rank k (0 = smallest |x|, equal |x| ranked by column)
// is kept with probability P(k) = p_lo + (p_hi - p_lo) * (k / (n - 1)) (n = 1: the midpoint),
// i.e. iff its mask word passes the drop threshold of 1 - P(k). Every step is one float64 IEEE
// operation in this order, so the Python reference reproduces the thresholds exactly.
#pragma once

#include <cstdint>

#include "dare_math.h"
#include "macros.h"

namespace darex {

DAREX_HD_INLINE double rank_fraction(int64_t rank, int64_t n) {
  if (n <= 1) return 0.5;
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(static_cast<double>(rank), static_cast<double>(n - 1));
#else
  return static_cast<double>(rank) / static_cast<double>(n - 1);
#endif
}

// Keep probability of rank `rank` in a row of `n`.
DAREX_HD_INLINE double rank_keep_probability(double p_lo, double p_hi, int64_t rank, int64_t n) {
  return acc_add(p_lo, acc_mul(acc_sub(p_hi, p_lo), rank_fraction(rank, n)));
}

// The element of rank `rank` is kept iff its word u satisfies u >= this threshold.
DAREX_HD_INLINE uint32_t rank_drop_threshold(double p_lo, double p_hi, int64_t rank, int64_t n) {
  return drop_threshold(acc_sub(1.0, rank_keep_probability(p_lo, p_hi, rank, n)));
}

}  // namespace darex
