// Helpers shared by the CPU storage kernels: the packed keep mask of a seeded tensor (computed
// once, in parallel chunks, with exclusive prefix counts so every chunk knows where its values
// start: deterministic for any thread count) and small dispatch utilities.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../common/bitpack.h"
#include "../common/dare_math.h"
#include "keep_bits.h"
#include "../ops/prune_args.h"
#include "skip_walk.h"

namespace darex::cpu {

constexpr int64_t kStorageChunk = int64_t(1) << 16;  // elements per task (a multiple of 64)
constexpr int64_t kStorageGrain = int64_t(1) << 16;  // elements per task, at least, for row loops

// The keep mask of elements [0, n) of a seeded tensor as packed bits (n / 8 bytes: 1/16 of a
// bf16 tensor), plus the value index where each chunk of kStorageChunk elements starts.
struct KeepPlan {
  std::unique_ptr<uint64_t[]> bits;
  std::vector<int64_t> starts;  // size chunks + 1; starts.back() = number kept
  int64_t n = 0;
  int64_t chunks() const { return static_cast<int64_t>(starts.size()) - 1; }
  int64_t total() const { return starts.back(); }
};

// The plan's skeleton: counts[c] = fill(s, len, bits + s / 64) for every chunk c (element s,
// length len) in parallel, then their prefix sums. fill writes the chunk's bits and returns how
// many are set.
template <typename Fill>
KeepPlan plan_keep_chunks(int64_t n, const Fill& fill) {
  KeepPlan plan;
  plan.n = n;
  const int64_t chunks = (n + kStorageChunk - 1) / kStorageChunk;
  plan.bits.reset(new uint64_t[static_cast<size_t>(std::max<int64_t>(1, (n + 63) / 64))]);
  plan.starts.assign(static_cast<size_t>(chunks + 1), 0);
  uint64_t* bits = plan.bits.get();
  int64_t* counts = plan.starts.data() + 1;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t s = c * kStorageChunk;
      counts[c] = fill(s, std::min(kStorageChunk, n - s), bits + s / 64);
    }
  });
  for (int64_t c = 0; c < chunks; ++c) plan.starts[c + 1] += plan.starts[c];
  return plan;
}

inline KeepPlan plan_keep(uint64_t seed, uint64_t offset, int64_t n, uint32_t thr) {
  return plan_keep_chunks(n, [&](int64_t s, int64_t len, uint64_t* b) {
    return keep_bits(seed, offset + static_cast<uint64_t>(s), len, thr, b);
  });
}

// The same plan under mask spec v2: each chunk's bits are filled with the common outcome, then
// the rare elements of its stripe pieces are flipped (O(n / 64) words plus O(rare)).
inline KeepPlan plan_keep_skip(uint64_t seed, uint64_t offset, int64_t n, const SkipPlan& skip) {
  return plan_keep_chunks(n, [&](int64_t s, int64_t len, uint64_t* b) {
    const int64_t words = (len + 63) / 64;
    std::fill(b, b + words, skip.rare_is_keep ? uint64_t(0) : ~uint64_t(0));
    if (len % 64 != 0) b[words - 1] &= (uint64_t(1) << (len % 64)) - 1;  // no bit past n
    std::vector<int32_t> rare(static_cast<size_t>(kSkipStripe));
    int64_t rare_total = 0;
    for_each_piece_in(offset, s, s + len, [&](int64_t first, int32_t piece) {
      const int32_t k = skip.rare_in(seed, offset + static_cast<uint64_t>(first), piece, rare.data());
      const int64_t j = first - s;
      for (int32_t t = 0; t < k; ++t) b[(j + rare[t]) / 64] ^= uint64_t(1) << ((j + rare[t]) % 64);
      rare_total += k;
    });
    return skip.rare_is_keep ? rare_total : len - rare_total;
  });
}

// The keep plan under either mask spec (mask_spec as in ops/prune_args.h).
inline KeepPlan plan_keep_spec(int64_t mask_spec, double p, uint64_t seed, uint64_t offset, int64_t n) {
  if (mask_spec == kMaskSkip) return plan_keep_skip(seed, offset, n, SkipPlan(p));
  return plan_keep(seed, offset, n, drop_threshold(p));
}

// Words of mask bits this far ahead get their destination cache lines prefetched: a sparse
// scatter is bound by the latency of scattered read-modify-writes, not by bandwidth, unless
// several lines are in flight at once.
constexpr int64_t kPrefetchWords = 8;

// Prefetches (for writing) the cache lines of `dst` holding the elements flagged in mask word
// `m` whose element 0 is `first`.
template <typename T>
inline void prefetch_flagged(const T* dst, int64_t first, uint64_t m) {
  uintptr_t last_line = ~uintptr_t(0);
  for_each_set_bit(m, [&](int j) {
    const T* p = dst + first + j;
    const uintptr_t line = reinterpret_cast<uintptr_t>(p) >> 6;
    if (line != last_line) {
      __builtin_prefetch(p, 1, 3);
      last_line = line;
    }
  });
}

// f(element, value_index) for every kept element of chunk c, in order; the destination `dst`
// is prefetched kPrefetchWords words ahead.
template <typename T, typename F>
inline void for_each_kept_in_chunk(const KeepPlan& plan, int64_t c, const T* dst, const F& f) {
  const int64_t s = c * kStorageChunk;
  const int64_t e = std::min(plan.n, s + kStorageChunk);
  int64_t k = plan.starts[static_cast<size_t>(c)];
  const int64_t w_end = (e + 63) / 64;
  for (int64_t w = s / 64; w < w_end; ++w) {
    if (w + kPrefetchWords < w_end)
      prefetch_flagged(dst, (w + kPrefetchWords) * 64, plan.bits[static_cast<size_t>(w + kPrefetchWords)]);
    const int64_t base = w * 64;
    for_each_set_bit(plan.bits[static_cast<size_t>(w)], [&](int j) { f(base + j, k++); });
  }
}

// x != 0 in the accumulation type (a tiny float64 is not zero; -0.0 and +0.0 are both zero).
template <typename scalar_t>
inline bool is_nonzero(scalar_t x) {
  using acc_t = acc_of<scalar_t>;
  return static_cast<acc_t>(x) != acc_t(0);
}

// Bits of x != 0 for 64 elements (bit j = element j), from the raw bits without the sign: the
// compare loop vectorizes, and 8 flag bytes become 8 bits with one multiply (each flag lands
// on its own bit of the top byte, no carries). NaN counts as nonzero, -0.0 as zero.
template <typename scalar_t>
inline uint64_t nonzero_bits64(const scalar_t* x) {
  using raw_t = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                   std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
  constexpr raw_t kMagnitude = static_cast<raw_t>(~(raw_t(1) << (8 * sizeof(raw_t) - 1)));
  raw_t raw[64];
  std::memcpy(raw, x, sizeof(raw));
  uint8_t flags[64];
  for (int j = 0; j < 64; ++j) flags[j] = (raw[j] & kMagnitude) != 0;
  uint64_t m = 0;
  for (int g = 0; g < 8; ++g) {
    uint64_t w;
    std::memcpy(&w, flags + 8 * g, 8);
    m |= ((w * 0x0102040810204080ull) >> 56) << (8 * g);
  }
  return m;
}

// Packs the nonzero flags of a row of `cols` values into packed_row_bytes(cols) bytes (padding
// bits zero); returns the row's nonzero count.
template <typename scalar_t>
inline int64_t pack_nonzero_row(const scalar_t* x, int64_t cols, uint8_t* bits) {
  int64_t count = 0;
  int64_t c = 0;
  for (; c + 64 <= cols; c += 64) {
    const uint64_t m = nonzero_bits64(x + c);
    std::memcpy(bits + c / 8, &m, 8);
    count += popcount64(m);
  }
  for (; c < cols; c += 8) {
    uint8_t b = 0;
    for (int j = 0; j < 8 && c + j < cols; ++j) b |= static_cast<uint8_t>(is_nonzero(x[c + j]) << j);
    bits[c / 8] = b;
    count += popcount64(b);
  }
  return count;
}

// f(column) for every set bit of one packed row, in column order.
template <typename F>
inline void for_each_set_column(const uint8_t* bits, int64_t row_bytes, const F& f) {
  for (int64_t b = 0; b < row_bytes; b += 8) {
    const int64_t base = b * 8;
    for_each_set_bit(load_bits(bits + b, row_bytes - b), [&](int j) { f(base + j); });
  }
}

// Rows per parallel task so each task covers about kStorageGrain elements.
inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kStorageGrain / std::max<int64_t>(1, cols));
}

}  // namespace darex::cpu
