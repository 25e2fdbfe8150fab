// Philox words come from philox_fill into an L1-resident buffer; the compare turns 64 words
// into one mask word (AVX-512: four unsigned compares into k-masks; AVX2: sign-flipped signed
// compares and movemask), so later passes touch n / 8 bytes instead of regenerating words.
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include "keep_bits.h"

#include <algorithm>

#include "../common/dare_math.h"
#include "philox_fill.h"

#if DAREX_X86_INTRINSICS
#include <immintrin.h>
#endif

namespace darex::cpu {
namespace {

constexpr int64_t kWords = 2048;  // words per philox_fill (8 KiB)

inline uint64_t compare_scalar(const uint32_t* u, int64_t count, uint32_t thr) {
  uint64_t m = 0;
  for (int64_t t = 0; t < count; ++t) m |= static_cast<uint64_t>(is_kept(u[t], thr)) << t;
  return m;
}

int64_t keep_bits_scalar(uint64_t seed, uint64_t first, int64_t n, uint32_t thr, uint64_t* bits) {
  alignas(64) uint32_t words[kWords];
  int64_t kept = 0;
  for (int64_t s = 0; s < n; s += kWords) {
    const int64_t count = std::min(kWords, n - s);
    philox_fill(seed, first + static_cast<uint64_t>(s), count, words);
    for (int64_t g = 0; g < count; g += 64) {
      const uint64_t m = compare_scalar(words + g, std::min<int64_t>(64, count - g), thr);
      bits[(s + g) / 64] = m;
      kept += __builtin_popcountll(m);
    }
  }
  return kept;
}

#if DAREX_X86_INTRINSICS

__attribute__((target("avx2,popcnt"))) int64_t keep_bits_avx2(uint64_t seed, uint64_t first,
                                                                int64_t n, uint32_t thr,
                                                                uint64_t* bits) {
  alignas(64) uint32_t words[kWords];
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i t = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(thr)), flip);
  int64_t kept = 0;
  for (int64_t s = 0; s < n; s += kWords) {
    const int64_t count = std::min(kWords, n - s);
    philox_fill(seed, first + static_cast<uint64_t>(s), count, words);
    int64_t g = 0;
    for (; g + 64 <= count; g += 64) {
      uint64_t m = 0;
      for (int q = 0; q < 8; ++q) {
        const __m256i x = _mm256_xor_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + g + 8 * q)), flip);
        // dropped iff thr > u (unsigned), i.e. (thr ^ 2^31) > (u ^ 2^31) signed
        const unsigned drop =
            static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, x))));
        m |= static_cast<uint64_t>(~drop & 0xFFu) << (8 * q);
      }
      bits[(s + g) / 64] = m;
      kept += _mm_popcnt_u64(m);
    }
    if (g < count) {
      const uint64_t m = compare_scalar(words + g, count - g, thr);
      bits[(s + g) / 64] = m;
      kept += _mm_popcnt_u64(m);
    }
  }
  return kept;
}

__attribute__((target("avx512f,popcnt"))) int64_t keep_bits_avx512(uint64_t seed, uint64_t first,
                                                                    int64_t n, uint32_t thr,
                                                                    uint64_t* bits) {
  alignas(64) uint32_t words[kWords];
  const __m512i t = _mm512_set1_epi32(static_cast<int>(thr));
  int64_t kept = 0;
  for (int64_t s = 0; s < n; s += kWords) {
    const int64_t count = std::min(kWords, n - s);
    philox_fill(seed, first + static_cast<uint64_t>(s), count, words);
    int64_t g = 0;
    for (; g + 64 <= count; g += 64) {
      uint64_t m = 0;
      for (int q = 0; q < 4; ++q)
        m |= static_cast<uint64_t>(_mm512_cmpge_epu32_mask(_mm512_loadu_si512(words + g + 16 * q), t))
             << (16 * q);
      bits[(s + g) / 64] = m;
      kept += _mm_popcnt_u64(m);
    }
    if (g < count) {
      const uint64_t m = compare_scalar(words + g, count - g, thr);
      bits[(s + g) / 64] = m;
      kept += _mm_popcnt_u64(m);
    }
  }
  return kept;
}

#endif

}  // namespace

int64_t keep_bits(uint64_t seed, uint64_t first_index, int64_t n, uint32_t thr, uint64_t* bits) {
#if DAREX_X86_INTRINSICS
  switch (active_isa()) {
    case Isa::kAvx512: return keep_bits_avx512(seed, first_index, n, thr, bits);
    case Isa::kAvx2: return keep_bits_avx2(seed, first_index, n, thr, bits);
    default: break;
  }
#endif
  return keep_bits_scalar(seed, first_index, n, thr, bits);
}

}  // namespace darex::cpu
