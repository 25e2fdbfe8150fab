// Philox4x32-10 (Salmon et al. 2011, Random123) and the darex mask spec's word lookup.
// The mask of element i is a pure function of (seed, i): key = (seed lo, seed hi),
// counter = (b lo, b hi, 0, 0) with b = i / 4, word = i % 4. See docs/mask_spec.md.
#pragma once

#include <cstdint>

#include "macros.h"

namespace darex {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key bump, golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // key bump, sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

struct Philox4 {
  uint32_t v[4];
};

DAREX_HD_INLINE void philox_mulhilo(uint32_t a, uint32_t m, uint32_t& hi, uint32_t& lo) {
  const uint64_t prod = static_cast<uint64_t>(a) * m;
  hi = static_cast<uint32_t>(prod >> 32);
  lo = static_cast<uint32_t>(prod);
}

DAREX_HD_INLINE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(ctr.v[0], kPhiloxM0, hi0, lo0);
    philox_mulhilo(ctr.v[2], kPhiloxM1, hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The four words of Philox block b = i / 4 for a 64-bit seed, per the mask spec.
DAREX_HD_INLINE Philox4 philox_block(uint64_t seed, uint64_t block) {
  Philox4 ctr{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}};
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Word u_i of the spec for flat element index i (slow path: one block per element).
DAREX_HD_INLINE uint32_t philox_word(uint64_t seed, uint64_t index) {
  return philox_block(seed, index >> 2).v[index & 3];
}

}  // namespace darex
