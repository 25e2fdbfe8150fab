// Order-preserving unsigned keys of floating-point scores, for radix selection. Shared by the
// CPU and CUDA top-k kernels so both pick the same elements.
//
// key(x) orders like x: negative floats get all bits flipped, non-negative ones the sign bit
// set. -0.0 is folded onto +0.0 (they compare equal, so the lower-index rule decides between
// them). NaN is not ordered: callers count it (is_nan_bits) and refuse the input.
// Selecting the k smallest is selecting the k largest of ~key.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace darex {

template <typename U>
struct RadixTraits;

template <>
struct RadixTraits<uint16_t> {
  static constexpr uint16_t kSign = 0x8000u;
  static constexpr int kBits = 16;
};
template <>
struct RadixTraits<uint32_t> {
  static constexpr uint32_t kSign = 0x80000000u;
  static constexpr int kBits = 32;
};
template <>
struct RadixTraits<uint64_t> {
  static constexpr uint64_t kSign = 0x8000000000000000ull;
  static constexpr int kBits = 64;
};

// `bits` is the IEEE bit pattern of the score (bf16/fp16 in 16 bits, fp32 in 32, fp64 in 64).
template <typename U>
DAREX_HD_INLINE U radix_key(U bits, bool largest) {
  constexpr U sign = RadixTraits<U>::kSign;
  if ((bits & static_cast<U>(~sign)) == 0) bits = 0;  // -0.0 -> +0.0
  const U key = (bits & sign) ? static_cast<U>(~bits) : static_cast<U>(bits | sign);
  return largest ? key : static_cast<U>(~key);
}

// NaN test on raw bits: all-ones exponent and a non-zero mantissa, given the exponent mask.
template <typename U>
DAREX_HD_INLINE bool is_nan_bits(U bits, U exponent_mask) {
  const U magnitude = bits & static_cast<U>(~RadixTraits<U>::kSign);
  return magnitude > exponent_mask;
}

// Radix digits: 11 bits per pass (a 2048-bin histogram fits in L1 / shared memory).
constexpr int kRadixBits = 11;
constexpr int kRadixBins = 1 << kRadixBits;

template <typename U>
DAREX_HD_INLINE int radix_passes() {
  return (RadixTraits<U>::kBits + kRadixBits - 1) / kRadixBits;
}

// Digit of `key` in pass `pass` (0 = most significant).
template <typename U>
DAREX_HD_INLINE uint32_t radix_digit(U key, int pass) {
  const int shift = RadixTraits<U>::kBits - kRadixBits * (pass + 1);
  return shift >= 0 ? static_cast<uint32_t>((key >> shift) & (kRadixBins - 1))
                    : static_cast<uint32_t>((key << (-shift)) & (kRadixBins - 1));
}

// The key bits digit `d` of pass `pass` contributes to the prefix (inverse of radix_digit).
template <typename U>
DAREX_HD_INLINE U radix_digit_bits(uint32_t d, int pass) {
  const int shift = RadixTraits<U>::kBits - kRadixBits * (pass + 1);
  return shift >= 0 ? static_cast<U>(static_cast<U>(d) << shift)
                    : static_cast<U>(static_cast<U>(d) >> (-shift));
}

// The score bits of a key (inverse of radix_key; -0.0 comes back as +0.0).
template <typename U>
DAREX_HD_INLINE U radix_key_bits(U key, bool largest) {
  if (!largest) key = static_cast<U>(~key);
  return (key & RadixTraits<U>::kSign) ? static_cast<U>(key & static_cast<U>(~RadixTraits<U>::kSign))
                                       : static_cast<U>(~key);
}

// Mask of the key bits already fixed after `passes` passes (the prefix).
template <typename U>
DAREX_HD_INLINE U radix_prefix_mask(int passes) {
  const int fixed = kRadixBits * passes;
  if (fixed >= RadixTraits<U>::kBits) return static_cast<U>(~U(0));
  if (fixed == 0) return U(0);
  return static_cast<U>(~U(0)) << (RadixTraits<U>::kBits - fixed);
}

}  // namespace darex
