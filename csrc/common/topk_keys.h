// Key sources of the top-k ops, shared by the CPU and CUDA kernels so both select the same
// elements: key(i) is the radix key of element i (common/radix_key.h), nan(i) whether its
// score is NaN, row(r, cols) the same source over row r of a [rows, cols] tensor.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "convert.h"
#include "dare_math.h"
#include "macros.h"
#include "radix_key.h"

namespace darex {

// Storage bits of each score dtype and its exponent mask (for the NaN test).
template <typename scalar_t> struct ScoreBits;
template <> struct ScoreBits<float> { using U = uint32_t; static constexpr U kExp = 0x7F800000u; };
template <> struct ScoreBits<double> { using U = uint64_t; static constexpr U kExp = 0x7FF0000000000000ull; };
template <> struct ScoreBits<c10::Half> { using U = uint16_t; static constexpr U kExp = 0x7C00u; };
template <> struct ScoreBits<c10::BFloat16> { using U = uint16_t; static constexpr U kExp = 0x7F80u; };

// WANDA score |x| * a in the accumulation type (a: the input feature's activation norm).
template <typename acc_t>
DAREX_HD_INLINE acc_t wanda_score(acc_t x, acc_t a) {
  return acc_mul(acc_abs(x), a);
}

// The scores themselves, read as raw bits (U: the dtype's storage bits, see ScoreBits).
// Largest is a bool, or std::true_type / std::false_type to fix the direction at compile time
// (the CPU kernel does, so its key loops need no per-element select). The NaN exponent mask is
// a compile-time constant of the dtype, so the key loops keep it in an immediate.
template <typename scalar_t, typename Largest = bool>
struct ScoreKeys {
  using U = typename ScoreBits<scalar_t>::U;
  const U* bits;
  Largest largest;
  DAREX_HD_INLINE ScoreKeys row(int64_t r, int64_t cols) const { return {bits + r * cols, largest}; }
  DAREX_HD_INLINE U key(int64_t i) const { return radix_key<U>(bits[i], largest); }
  DAREX_HD_INLINE bool nan(int64_t i) const { return is_nan_bits<U>(bits[i], ScoreBits<scalar_t>::kExp); }
};

// |x|: the sign bit cleared, largest first (magnitude pruning).
template <typename scalar_t>
struct AbsKeys {
  using U = typename ScoreBits<scalar_t>::U;
  const U* bits;
  DAREX_HD_INLINE AbsKeys row(int64_t r, int64_t cols) const { return {bits + r * cols}; }
  DAREX_HD_INLINE U key(int64_t i) const {
    return radix_key<U>(static_cast<U>(bits[i] & static_cast<U>(~RadixTraits<U>::kSign)), true);
  }
  DAREX_HD_INLINE bool nan(int64_t i) const { return is_nan_bits<U>(bits[i], ScoreBits<scalar_t>::kExp); }
};

// WANDA scores of a [rows, cols] delta, largest first; element j of a row view is column j.
template <typename scalar_t>
struct WandaKeys {
  using acc_t = acc_of<scalar_t>;
  using U = typename ScoreBits<acc_t>::U;
  const scalar_t* x;
  const acc_t* act;
  DAREX_HD_INLINE WandaKeys row(int64_t r, int64_t cols) const { return {x + r * cols, act}; }
  DAREX_HD_INLINE U score_bits(int64_t j) const {
    return to_bits(wanda_score(static_cast<acc_t>(x[j]), act[j]));
  }
  DAREX_HD_INLINE U key(int64_t j) const { return radix_key<U>(score_bits(j), true); }
  DAREX_HD_INLINE bool nan(int64_t j) const { return is_nan_bits<U>(score_bits(j), ScoreBits<acc_t>::kExp); }
};

}  // namespace darex
