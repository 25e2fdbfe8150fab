// Per-element DARE math, written once for CPU and CUDA so both agree bit for bit.
// No fast-math: every operation is one IEEE op with round-to-nearest; on the device the
// explicit __f*_rn intrinsics keep nvcc from contracting a*b+c into an FMA. Results reach memory
// through the *_store functions and add_scaled, which follow convert.h's NaN rule.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "convert.h"
#include "macros.h"

namespace darex {

// Drop threshold T(p) = min(floor(p * 2^32), 2^32 - 1), computed in float64.
// Element i is kept iff u_i >= T(p); p = 0 keeps everything. Callers validate 0 <= p < 1.
DAREX_HD_INLINE uint32_t drop_threshold(double p) {
  const double scaled = p * 4294967296.0;  // exact: a power-of-two scale
  if (!(scaled > 0.0)) return 0u;           // p <= 0 (and NaN, rejected earlier) keeps all
  if (scaled >= 4294967295.0) return 0xFFFFFFFFu;
  return static_cast<uint32_t>(scaled);     // truncation == floor for positive values
}

DAREX_HD_INLINE bool is_kept(uint32_t u, uint32_t threshold) { return u >= threshold; }

// The accumulation type of a storage dtype: float for fp32/fp16/bf16, double for fp64.
template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Arithmetic in the accumulation type.
DAREX_HD_INLINE float acc_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
DAREX_HD_INLINE double acc_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
DAREX_HD_INLINE float acc_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
DAREX_HD_INLINE double acc_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
DAREX_HD_INLINE float acc_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
DAREX_HD_INLINE double acc_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

DAREX_HD_INLINE float acc_abs(float a) {
#if defined(__CUDA_ARCH__)
  return fabsf(a);
#else
  return std::fabs(a);
#endif
}
DAREX_HD_INLINE double acc_abs(double a) {
#if defined(__CUDA_ARCH__)
  return fabs(a);
#else
  return std::fabs(a);
#endif
}

// 1/q in the accumulation type: q is first rounded to acc_t, then one correctly rounded
// division. The Python reference computes exactly this.
template <typename acc_t>
DAREX_HD_INLINE acc_t inverse_q(acc_t q) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(acc_t) == 4) return __fdiv_rn(1.0f, q);
  else return __ddiv_rn(1.0, q);
#else
  return acc_t(1) / q;
#endif
}

// prune: kept -> x * (1/q), dropped -> exactly 0.
template <typename acc_t>
DAREX_HD_INLINE acc_t prune_value(acc_t x, acc_t inv_q, bool kept) {
  return kept ? acc_mul(x, inv_q) : acc_t(0);
}

// dare: base + prune(finetuned - base) in the accumulation type; dropped -> base. Stored through
// dare_store, which copies a dropped base's bits instead of rounding this value.
template <typename acc_t>
DAREX_HD_INLINE acc_t dare_value(acc_t finetuned, acc_t base, acc_t inv_q, bool kept) {
  return kept ? acc_add(base, acc_mul(acc_sub(finetuned, base), inv_q)) : base;
}

// prune_ / structural / seeded_pack element as stored: kept -> x * (1/q) rounded once (NaN ->
// canonical), dropped -> +0.0. Written as one value through to_storage so CPU loops vectorize.
template <typename scalar_t, typename acc_t>
DAREX_HD_INLINE scalar_t prune_store(scalar_t x, acc_t inv, bool kept) {
  return to_storage<scalar_t>(prune_value(static_cast<acc_t>(x), inv, kept));
}

// dare element as stored: kept -> base + (ft - base) * (1/q) rounded once (NaN -> canonical),
// dropped -> base's own bits (a copy: a NaN base keeps its payload and sign). The kept value is
// computed either way and the bits selected, so CPU loops stay branch-free.
template <typename scalar_t, typename acc_t>
DAREX_HD_INLINE scalar_t dare_store(scalar_t finetuned, scalar_t base, acc_t inv, bool kept) {
  const scalar_t computed =
      to_storage<scalar_t>(dare_value(static_cast<acc_t>(finetuned), static_cast<acc_t>(base), inv, true));
  return from_bits<scalar_t>(kept ? to_bits(computed) : to_bits(base));
}

// dst + alpha * v in the accumulation type, one rounding to the dtype (NaN -> canonical): the
// accumulate=True step of every storage scatter (alpha is already in the accumulation type).
template <typename scalar_t>
DAREX_HD_INLINE scalar_t add_scaled(scalar_t dst, scalar_t v, acc_of<scalar_t> alpha) {
  using acc_t = acc_of<scalar_t>;
  return to_storage<scalar_t>(acc_add(static_cast<acc_t>(dst), acc_mul(alpha, static_cast<acc_t>(v))));
}

}  // namespace darex
