// Writing a scalar_t, the one NaN rule of both backends (docs/mask_spec.md, "Numerics"):
//  - a COPIED value (dare's dropped entry = base, an entry a scatter leaves alone, a packed value
//    stored as is) moves as raw bits: never through float, so NaN payloads and signs survive;
//  - a COMPUTED value (x * (1/q), base + (ft - base) * (1/q), dst + alpha * v) is rounded once
//    to the dtype by to_storage, and a NaN result becomes the one canonical NaN of the dtype.
// Canonical NaN: positive, quiet, zero payload (bf16 0x7FC0, fp16 0x7E00, fp32 0x7FC00000,
// fp64 0x7FF8000000000000). Why one NaN: the hardware disagrees. x86 propagates an input NaN's
// payload and sign and makes inf * 0 = 0xFFC00000; NVIDIA GPUs return 0x7FFFFFFF; c10's host
// bf16 conversion gives 0x7FC0 but the device's __float2bfloat16 / __float2half give 0x7FFF, and
// torch's own vectorized CPU conversions give bf16 0xFFFF and fp16 sign | 0x7E00 | payload.
// bf16's canonical NaN is c10::BFloat16(NaN) on the host; fp16's is c10::Half(+NaN).
// Framework-free: scalar_t is any 2-, 4- or 8-byte float type with float conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "macros.h"

namespace darex {

// The unsigned integer with the bits of a T.
template <typename T>
using bits_of = std::conditional_t<sizeof(T) == 2, uint16_t,
                                   std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;

template <typename T>
DAREX_HD_INLINE bits_of<T> to_bits(T v) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "a 2-, 4- or 8-byte float type");
  bits_of<T> b;
  memcpy(&b, &v, sizeof b);
  return b;
}

template <typename T>
DAREX_HD_INLINE T from_bits(bits_of<T> b) {
  T v;
  memcpy(&v, &b, sizeof v);
  return v;
}

// Bits of the canonical NaN of a dtype. Two-byte types are told apart by the bits of 1.0
// (bf16 0x3F80, fp16 0x3C00): this header must not include c10, and the compiler folds the test.
template <typename T>
DAREX_HD_INLINE bits_of<T> canonical_nan_bits() {
  if constexpr (sizeof(T) == 8) {
    return bits_of<T>(0x7FF8000000000000ull);
  } else if constexpr (sizeof(T) == 4) {
    return bits_of<T>(0x7FC00000u);
  } else {
    return to_bits(static_cast<T>(1.0f)) == 0x3F80u ? bits_of<T>(0x7FC0u) : bits_of<T>(0x7E00u);
  }
}

// The canonical NaN of the accumulation type (fp32 / fp64).
template <typename acc_t>
DAREX_HD_INLINE acc_t canonical_nan_acc() {
  return from_bits<acc_t>(canonical_nan_bits<acc_t>());
}

// A computed value in the accumulation type, rounded once to scalar_t; NaN -> canonical NaN.
// On the host the NaN is made canonical in float first (one vectorizable select): c10's fp32 ->
// bf16 / fp16 conversions map +0x7FC00000 to exactly 0x7FC0 / 0x7E00 (software and F16C paths
// alike). On the device the 2-byte conversions give 0x7FFF for every NaN, so the bits are set.
template <typename scalar_t, typename acc_t>
DAREX_HD_INLINE scalar_t to_storage(acc_t v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(scalar_t) == 2) {
    if (v != v) return from_bits<scalar_t>(canonical_nan_bits<scalar_t>());
    return static_cast<scalar_t>(v);
  }
#endif
  return static_cast<scalar_t>(v != v ? canonical_nan_acc<acc_t>() : v);
}

// +0.0 of any dtype (the value of a dropped entry), built from bits.
template <typename scalar_t>
DAREX_HD_INLINE scalar_t storage_zero() {
  return from_bits<scalar_t>(bits_of<scalar_t>(0));
}

}  // namespace darex
