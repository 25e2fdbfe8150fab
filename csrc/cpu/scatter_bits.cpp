// Decode / add loops over packed masks. The AVX-512 path handles a 64-bit mask word as four
// 16-lane groups (eight for fp64): expand the group's values into the flagged lanes, masked
// load / add / masked store of the destination. Every lane op is one IEEE op (the multiply and
// the add are separate instructions, as in add_scaled), a NaN sum becomes the canonical NaN
// (common/convert.h), and bf16 rounding is c10's round-to-nearest-even done in integer lanes, so
// both paths agree bit for bit.
#include "isa.h"  // first: its GCC 12 workaround must precede the intrinsic headers

#include "scatter_bits.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "../common/bitpack.h"
#include "../common/dare_math.h"

#if DAREX_X86_INTRINSICS
#include <immintrin.h>
#endif

namespace darex::cpu {
namespace {

constexpr int64_t kAheadWords = 4;  // destination lines are prefetched this many words ahead

// One prefetch per 64-byte span of the word's destination that has a flagged element: cheap
// enough for dense words (where the hardware prefetcher would do) and what sparse words need.
template <typename T>
inline void prefetch_lines(const T* dst, uint64_t m) {
  constexpr int kPerLine = 64 / sizeof(T);
  constexpr uint64_t kGroup = (uint64_t(1) << kPerLine) - 1;
  for (int g = 0; g < 64; g += kPerLine)
    if ((m >> g) & kGroup) __builtin_prefetch(dst + g, 1, 3);
}

// Prefetches the destination lines of the mask word kAheadWords after the one at bit `lo`.
template <typename T>
inline void prefetch_ahead(const T* dst, const uint8_t* bits, int64_t lo, int64_t nbits, int64_t nbytes) {
  const int64_t ahead = lo + 64 * kAheadWords;
  if (ahead < nbits) prefetch_lines(dst + ahead, load_bits(bits + ahead / 8, nbytes - ahead / 8));
}

template <typename T>
inline void prefetch_word(const T* dst, uint64_t m) {
  uintptr_t last = ~uintptr_t(0);
  for_each_set_bit(m, [&](int j) {
    const uintptr_t line = reinterpret_cast<uintptr_t>(dst + j) >> 6;
    if (line != last) {
      __builtin_prefetch(dst + j, 1, 3);
      last = line;
    }
  });
}

// Adds the flagged elements of one 64-element word: d[j] += alpha * next value, rounded once.
template <typename scalar_t>
inline int64_t add_word_scalar(uint64_t m, const scalar_t* src, scalar_t* d, double alpha) {
  using acc_t = acc_of<scalar_t>;
  const acc_t a = static_cast<acc_t>(alpha);
  int64_t k = 0;
  for_each_set_bit(m, [&](int j) { d[j] = add_scaled(d[j], src[k++], a); });
  return k;
}

template <typename scalar_t>
int64_t scatter_scalar(const uint8_t* bits, int64_t nbits, const scalar_t* src, scalar_t* dst,
                       double alpha, bool accumulate) {
  const int64_t nbytes = (nbits + 7) / 8;
  int64_t k = 0;
  for (int64_t lo = 0; lo < nbits; lo += 64) {
    const uint64_t m = load_bits(bits + lo / 8, nbytes - lo / 8);
    scalar_t* d = dst + lo;
    if (accumulate) {
      if (lo + 64 * kAheadWords < nbits)
        prefetch_word(dst + lo + 64 * kAheadWords,
                      load_bits(bits + (lo + 64 * kAheadWords) / 8, nbytes - (lo + 64 * kAheadWords) / 8));
      k += add_word_scalar(m, src + k, d, alpha);
    } else {
      const int64_t cnt = std::min<int64_t>(64, nbits - lo);
      for (int64_t j = 0; j < cnt; ++j) d[j] = scalar_t(0);
      for_each_set_bit(m, [&](int j) { d[j] = src[k++]; });
    }
  }
  return k;
}

#if DAREX_X86_INTRINSICS

#define DAREX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))

// A word with at most this many flagged elements is added element by element: at DARE densities
// (p >= 0.9: 6.4 flagged elements per word on average) the scalar read-add-round of the few
// flagged elements costs less than a 16-lane load / expand / convert / round per group. Measured
// on Zen 4 (2^26 elements): bf16 p = 0.9 15.7 -> 12.4 ms, fp32 15.6 -> 12.4 ms; at p = 0.7
// (19 per word) and below the vector groups win, hence the cut at 16.
constexpr int kScalarWordMax = 16;

DAREX_AVX512 inline __mmask16 live16(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

DAREX_AVX512 inline __m512 bf16_to_ps(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// The low 16 bits of each 32-bit lane, packed. A permute rather than vpmovdw, which compilers
// fuse with the following masked store into a memory-destination form that is slow on Zen 4.
DAREX_AVX512 inline __m256i low_halves(__m512i x) {
  const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30, 28, 26, 24,
                                       22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  return _mm512_castsi512_si256(_mm512_permutexvar_epi16(idx, x));
}

// dst + alpha * v with a NaN sum made canonical, as add_scaled.
DAREX_AVX512 inline __m512 add_scaled_ps(__m512 d, __m512 a, __m512 v) {
  const __m512 sum = _mm512_add_ps(d, _mm512_mul_ps(a, v));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q), sum,
                              _mm512_set1_ps(canonical_nan_acc<float>()));
}

DAREX_AVX512 inline __m512d add_scaled_pd(__m512d d, __m512d a, __m512d v) {
  const __m512d sum = _mm512_add_pd(d, _mm512_mul_pd(a, v));
  return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(sum, sum, _CMP_UNORD_Q), sum,
                              _mm512_set1_pd(canonical_nan_acc<double>()));
}

// c10::BFloat16's round_to_nearest_even: NaN -> 0x7FC0 (the canonical NaN), else
// (u + 0x7FFF + lsb) >> 16.
DAREX_AVX512 inline __m256i ps_to_bf16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
  return low_halves(r);
}

// The 16-lane (8 for fp64) groups of a 64-bit mask word, as g = group index: in accumulate
// mode only the nonempty groups (a sparse word costs one iteration, an empty one none).
#define DAREX_FOR_EACH_GROUP(LANES, BODY)                                        \
  if (accumulate) {                                                             \
    for (uint64_t rest = m; rest != 0;) {                                       \
      const int g = lowest_bit(rest) / (LANES);                                 \
      rest &= ~(((uint64_t(1) << (LANES)) - 1) << ((LANES) * g));               \
      BODY                                                                      \
    }                                                                           \
  } else {                                                                      \
    for (int g = 0; g < 64 / (LANES) && lo + (LANES) * g < nbits; ++g) { BODY } \
  }

DAREX_AVX512 int64_t scatter_f32(const uint8_t* bits, int64_t nbits, const float* src, float* dst,
                                 double alpha, bool accumulate) {
  const __m512 a = _mm512_set1_ps(static_cast<float>(alpha));
  const int64_t nbytes = (nbits + 7) / 8;
  const float* s = src;
  for (int64_t lo = 0; lo < nbits; lo += 64) {
    const uint64_t m = load_bits(bits + lo / 8, nbytes - lo / 8);
    if (accumulate) prefetch_ahead(dst, bits, lo, nbits, nbytes);
    if (accumulate && popcount64(m) <= kScalarWordMax) {
      s += add_word_scalar(m, s, dst + lo, alpha);
      continue;
    }
    DAREX_FOR_EACH_GROUP(16, {
      const __mmask16 mk = static_cast<__mmask16>(m >> (16 * g));
      float* d = dst + lo + 16 * g;
      const int c = _mm_popcnt_u32(mk);
      // Register-form expand of a masked load: the memory form is microcoded on some CPUs.
      const __m512 v = _mm512_maskz_expand_ps(mk, _mm512_maskz_loadu_ps(live16(c), s));
      s += c;
      if (accumulate) {
        if (lo + 16 * g + 16 <= nbits) {
          const __m512 b = _mm512_loadu_ps(d);
          _mm512_storeu_ps(d, _mm512_mask_blend_ps(mk, b, add_scaled_ps(b, a, v)));
        } else {
          const __m512 b = _mm512_maskz_loadu_ps(mk, d);
          _mm512_mask_storeu_ps(d, mk, add_scaled_ps(b, a, v));
        }
      } else {
        _mm512_mask_storeu_ps(d, live16(nbits - lo - 16 * g), v);
      }
    })
  }
  return s - src;
}

DAREX_AVX512 int64_t scatter_bf16(const uint8_t* bits, int64_t nbits, const c10::BFloat16* src,
                                  c10::BFloat16* dst, double alpha, bool accumulate) {
  const __m512 a = _mm512_set1_ps(static_cast<float>(alpha));
  const int64_t nbytes = (nbits + 7) / 8;
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  for (int64_t lo = 0; lo < nbits; lo += 64) {
    const uint64_t m = load_bits(bits + lo / 8, nbytes - lo / 8);
    if (accumulate) prefetch_ahead(out, bits, lo, nbits, nbytes);
    if (accumulate && popcount64(m) <= kScalarWordMax) {
      s += add_word_scalar(m, reinterpret_cast<const c10::BFloat16*>(s), reinterpret_cast<c10::BFloat16*>(out + lo), alpha);
      continue;
    }
    DAREX_FOR_EACH_GROUP(16, {
      const __mmask16 mk = static_cast<__mmask16>(m >> (16 * g));
      uint16_t* d = out + lo + 16 * g;
      const int c = _mm_popcnt_u32(mk);
      const __m256i raw = _mm256_maskz_loadu_epi16(live16(c), s);
      s += c;
      const __m512 v = _mm512_maskz_expand_ps(mk, bf16_to_ps(raw));
      if (accumulate) {
        if (lo + 16 * g + 16 <= nbits) {
          // Whole group in range: plain load / store, unflagged lanes rewritten with their own bits.
          const __m256i braw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d));
          const __m256i sum = ps_to_bf16(_mm512_add_ps(bf16_to_ps(braw), _mm512_mul_ps(a, v)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_mask_blend_epi16(mk, braw, sum));
        } else {
          const __m512 b = bf16_to_ps(_mm256_maskz_loadu_epi16(mk, d));
          _mm256_mask_storeu_epi16(d, mk, ps_to_bf16(_mm512_add_ps(b, _mm512_mul_ps(a, v))));
        }
      } else {
        // v holds bf16 values widened exactly: narrowing is a shift, no rounding.
        const __m256i h = low_halves(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
        _mm256_mask_storeu_epi16(d, live16(nbits - lo - 16 * g), h);
      }
    })
  }
  return s - reinterpret_cast<const uint16_t*>(src);
}

DAREX_AVX512 int64_t scatter_f64(const uint8_t* bits, int64_t nbits, const double* src, double* dst,
                                 double alpha, bool accumulate) {
  const __m512d a = _mm512_set1_pd(alpha);
  const int64_t nbytes = (nbits + 7) / 8;
  const double* s = src;
  for (int64_t lo = 0; lo < nbits; lo += 64) {
    const uint64_t m = load_bits(bits + lo / 8, nbytes - lo / 8);
    if (accumulate) prefetch_ahead(dst, bits, lo, nbits, nbytes);
    DAREX_FOR_EACH_GROUP(8, {
      const __mmask8 mk = static_cast<__mmask8>(m >> (8 * g));
      double* d = dst + lo + 8 * g;
      const int c = _mm_popcnt_u32(mk);
      const __m512d v = _mm512_maskz_expand_pd(mk, _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << c) - 1u), s));
      s += c;
      if (accumulate) {
        const __m512d b = _mm512_maskz_loadu_pd(mk, d);
        _mm512_mask_storeu_pd(d, mk, add_scaled_pd(b, a, v));
      } else {
        const int64_t left = nbits - lo - 8 * g;
        const __mmask8 live = left >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << left) - 1u);
        _mm512_mask_storeu_pd(d, live, v);
      }
    })
  }
  return s - src;
}

#undef DAREX_FOR_EACH_GROUP

#endif  // DAREX_X86_INTRINSICS

}  // namespace

template <typename scalar_t>
int64_t scatter_bits(const uint8_t* bits, int64_t nbits, const scalar_t* src, scalar_t* dst,
                     double alpha, bool accumulate) {
#if DAREX_X86_INTRINSICS
  if (active_isa() == Isa::kAvx512) {
    if constexpr (std::is_same_v<scalar_t, float>) return scatter_f32(bits, nbits, src, dst, alpha, accumulate);
    if constexpr (std::is_same_v<scalar_t, double>) return scatter_f64(bits, nbits, src, dst, alpha, accumulate);
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
      return scatter_bf16(bits, nbits, src, dst, alpha, accumulate);
  }
#endif
  return scatter_scalar(bits, nbits, src, dst, alpha, accumulate);
}

template int64_t scatter_bits<float>(const uint8_t*, int64_t, const float*, float*, double, bool);
template int64_t scatter_bits<double>(const uint8_t*, int64_t, const double*, double*, double, bool);
template int64_t scatter_bits<c10::Half>(const uint8_t*, int64_t, const c10::Half*, c10::Half*, double, bool);
template int64_t scatter_bits<c10::BFloat16>(const uint8_t*, int64_t, const c10::BFloat16*, c10::BFloat16*,
                                             double, bool);

}  // namespace darex::cpu
