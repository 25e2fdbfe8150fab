// Philox words in bulk. The vector paths run Philox blocks in SIMD lanes (struct of arrays:
// 8 blocks per AVX2 register in 32-bit lanes, 8 per AVX-512 register in 64-bit lanes), then
// transpose so words land in element order. The ISA is picked once at load time from the
// running CPU (isa.h).
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include "philox_fill.h"

#include <cstring>

#include "../common/philox.h"
#include "../common/skip_mask.h"

#if DAREX_X86_INTRINSICS
#include <immintrin.h>
#endif

namespace darex::cpu {

void philox_fill_scalar(uint64_t seed, uint64_t first_index, int64_t n, uint32_t* u) {
  int64_t k = 0;
  while (k < n) {
    const uint64_t index = first_index + static_cast<uint64_t>(k);
    const Philox4 block = philox_block(seed, index >> 2);
    for (unsigned w = static_cast<unsigned>(index & 3); w < 4 && k < n; ++w, ++k) u[k] = block.v[w];
  }
}

namespace {

void stripe_fill_scalar(uint64_t seed, uint64_t stripe, uint64_t first_draw, int64_t n, uint32_t* u) {
  int64_t k = 0;
  while (k < n) {
    const uint64_t draw = first_draw + static_cast<uint64_t>(k);
    const Philox4 block = skip_block(seed, stripe, static_cast<uint32_t>(draw >> 2));
    for (unsigned w = static_cast<unsigned>(draw & 3); w < 4 && k < n; ++w, ++k) u[k] = block.v[w];
  }
}

}  // namespace

#if DAREX_X86_INTRINSICS

namespace {

__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi,
                                                      __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                         // lanes 0,2,4,6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1,3,5,7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// 8 * kChains2 consecutive blocks starting at `block`, written in element order. Independent
// groups of 8 run in lockstep to hide the latency of each round's multiply-xor chain.
constexpr int kChains2 = 2;

// kStripe: mask spec v2's counters (stripe lo, stripe hi, block, 1) instead of v1's
// (block lo, block hi, 0, 0).
template <bool kStripe>
__attribute__((target("avx2"))) inline void philox8(uint64_t seed, uint64_t block, uint64_t stripe, uint32_t* out) {
  __m256i c0[kChains2], c1[kChains2], c2[kChains2], c3[kChains2];
  for (int g = 0; g < kChains2; ++g) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; ++l) {
      const uint64_t b = block + static_cast<uint64_t>(8 * g + l);
      lo[l] = static_cast<uint32_t>(b);
      hi[l] = static_cast<uint32_t>(b >> 32);
    }
    if constexpr (kStripe) {
      c0[g] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(stripe)));
      c1[g] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(stripe >> 32)));
      c2[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
      c3[g] = _mm256_set1_epi32(1);
    } else {
      c0[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
      c1[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
      c2[g] = _mm256_setzero_si256();
      c3[g] = _mm256_setzero_si256();
    }
  }
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < kChains2; ++g) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0[g], m0, hi0, lo0);
      mulhilo8(c2[g], m1, hi1, lo1);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), key0);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), key1);
      c1[g] = lo1;
      c3[g] = lo0;
    }
  }
  for (int g = 0; g < kChains2; ++g) {
    // 4x8 transpose: lane l of c_w is word w of block l.
    const __m256i t0 = _mm256_unpacklo_epi32(c0[g], c1[g]), t1 = _mm256_unpackhi_epi32(c0[g], c1[g]);
    const __m256i t2 = _mm256_unpacklo_epi32(c2[g], c3[g]), t3 = _mm256_unpackhi_epi32(c2[g], c3[g]);
    const __m256i s0 = _mm256_unpacklo_epi64(t0, t2), s1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i s2 = _mm256_unpacklo_epi64(t1, t3), s3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i* dst = reinterpret_cast<__m256i*>(out + 32 * g);
    _mm256_storeu_si256(dst + 0, _mm256_permute2x128_si256(s0, s1, 0x20));
    _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(s2, s3, 0x20));
    _mm256_storeu_si256(dst + 2, _mm256_permute2x128_si256(s0, s1, 0x31));
    _mm256_storeu_si256(dst + 3, _mm256_permute2x128_si256(s2, s3, 0x31));
  }
}

// AVX-512: one block per 64-bit lane, the 32-bit word in the lane's low half. _mm512_mul_epu32
// then yields the full 64-bit product with no shuffles: lo is the product itself (its high
// half is junk that the next multiply and the final pack ignore) and hi one shift away: per
// round 6 instructions for 8 blocks. A round is a serial chain (multiply, shift, xor), so
// kChains independent groups of 8 blocks run in lockstep to hide its latency.
constexpr int kChains = 4;

template <bool kStripe>
__attribute__((target("avx512f"))) inline void philox_wide(uint64_t seed, uint64_t block, uint64_t stripe,
                                                            uint32_t* out) {
  __m512i c0[kChains], c1[kChains], c2[kChains], c3[kChains];
  for (int g = 0; g < kChains; ++g) {
    const __m512i b = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(block + 8 * g)),
                                       _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    if constexpr (kStripe) {
      c0[g] = _mm512_set1_epi64(static_cast<uint32_t>(stripe));
      c1[g] = _mm512_set1_epi64(static_cast<uint32_t>(stripe >> 32));
      c2[g] = b;  // low half: block lo (a stripe has at most 1025 blocks)
      c3[g] = _mm512_set1_epi64(1);
    } else {
      c0[g] = b;  // low half: block lo; high half ignored
      c1[g] = _mm512_srli_epi64(b, 32);
      c2[g] = _mm512_setzero_si512();
      c3[g] = _mm512_setzero_si512();
    }
  }
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
    for (int g = 0; g < kChains; ++g) {
      const __m512i p0 = _mm512_mul_epu32(c0[g], m0);
      const __m512i p1 = _mm512_mul_epu32(c2[g], m1);
      c0[g] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[g], key0, 0x96);
      c2[g] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[g], key1, 0x96);
      c1[g] = p1;
      c3[g] = p0;
    }
  }
  // Lane l -> words (w0 | w1 << 32) and (w2 | w3 << 32), then interleave to element order.
  const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  for (int g = 0; g < kChains; ++g) {
    const __m512i w01 = _mm512_mask_blend_epi32(0xAAAA, c0[g], _mm512_slli_epi64(c1[g], 32));
    const __m512i w23 = _mm512_mask_blend_epi32(0xAAAA, c2[g], _mm512_slli_epi64(c3[g], 32));
    const __m512i lo = _mm512_unpacklo_epi64(w01, w23);  // blocks 0 2 4 6, 128 bits each
    const __m512i hi = _mm512_unpackhi_epi64(w01, w23);  // blocks 1 3 5 7
    __m512i* dst = reinterpret_cast<__m512i*>(out + 32 * g);
    _mm512_storeu_si512(dst + 0, _mm512_permutex2var_epi64(lo, first, hi));
    _mm512_storeu_si512(dst + 1, _mm512_permutex2var_epi64(lo, second, hi));
  }
}

// Head up to a block boundary and the ragged tail go through scalar code / a bounce buffer.
// first_index: a flat element index (v1) or a draw of `stripe` (kStripe).
template <int kBlocks, bool kStripe, void (*Kernel)(uint64_t, uint64_t, uint64_t, uint32_t*)>
inline void philox_fill_vec(uint64_t seed, uint64_t stripe, uint64_t first_index, int64_t n, uint32_t* u) {
  constexpr int64_t kStep = 4 * kBlocks;
  int64_t head = static_cast<int64_t>((4 - (first_index & 3)) & 3);
  if (head > n) head = n;
  if constexpr (kStripe) stripe_fill_scalar(seed, stripe, first_index, head, u);
  else philox_fill_scalar(seed, first_index, head, u);
  int64_t k = head;
  uint64_t block = (first_index + static_cast<uint64_t>(head)) >> 2;
  for (; k + kStep <= n; k += kStep, block += kBlocks) Kernel(seed, block, stripe, u + k);
  if (k < n) {
    alignas(64) uint32_t tail[kStep];
    Kernel(seed, block, stripe, tail);
    std::memcpy(u + k, tail, static_cast<size_t>(n - k) * sizeof(uint32_t));
  }
}

__attribute__((target("avx2"))) void philox_fill_avx2(uint64_t seed, uint64_t first_index,
                                                      int64_t n, uint32_t* u) {
  philox_fill_vec<8 * kChains2, false, philox8<false>>(seed, 0, first_index, n, u);
}

__attribute__((target("avx512f"))) void philox_fill_avx512(uint64_t seed, uint64_t first_index,
                                                          int64_t n, uint32_t* u) {
  philox_fill_vec<8 * kChains, false, philox_wide<false>>(seed, 0, first_index, n, u);
}

__attribute__((target("avx2"))) void stripe_fill_avx2(uint64_t seed, uint64_t stripe, uint64_t first_draw,
                                                      int64_t n, uint32_t* u) {
  philox_fill_vec<8 * kChains2, true, philox8<true>>(seed, stripe, first_draw, n, u);
}

__attribute__((target("avx512f"))) void stripe_fill_avx512(uint64_t seed, uint64_t stripe, uint64_t first_draw,
                                                          int64_t n, uint32_t* u) {
  philox_fill_vec<8 * kChains, true, philox_wide<true>>(seed, stripe, first_draw, n, u);
}

}  // namespace

void philox_fill(uint64_t seed, uint64_t first_index, int64_t n, uint32_t* u) {
  switch (active_isa()) {
    case Isa::kAvx512: return philox_fill_avx512(seed, first_index, n, u);
    case Isa::kAvx2: return philox_fill_avx2(seed, first_index, n, u);
    default: return philox_fill_scalar(seed, first_index, n, u);
  }
}

void philox_fill_stripe(uint64_t seed, uint64_t stripe, uint64_t first_draw, int64_t n, uint32_t* u) {
  switch (active_isa()) {
    case Isa::kAvx512: return stripe_fill_avx512(seed, stripe, first_draw, n, u);
    case Isa::kAvx2: return stripe_fill_avx2(seed, stripe, first_draw, n, u);
    default: return stripe_fill_scalar(seed, stripe, first_draw, n, u);
  }
}

#else  // no vector path on this platform

void philox_fill(uint64_t seed, uint64_t first_index, int64_t n, uint32_t* u) {
  philox_fill_scalar(seed, first_index, n, u);
}

void philox_fill_stripe(uint64_t seed, uint64_t stripe, uint64_t first_draw, int64_t n, uint32_t* u) {
  stripe_fill_scalar(seed, stripe, first_draw, n, u);
}

#endif

const char* philox_fill_isa() { return isa_name(active_isa()); }

}  // namespace darex::cpu
