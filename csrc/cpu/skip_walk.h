// Mask spec v2 ("skip") on the CPU: the host table, and the element range split into pieces that
// never cross a stripe boundary, so each piece's rare elements come from one walk of one stripe
// (common/skip_mask.h). Every op's v2 path is built from these two.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/skip_mask.h"
#include "philox_fill.h"

namespace darex::cpu {

// The table and which outcome is rare, for one call of an op.
struct SkipPlan {
  std::vector<uint32_t> table;
  std::vector<uint16_t> index;  // skip_index_build's: the gap in about one compare
  bool rare_is_keep;
  bool any_rare;  // false when rho rounds to no rare element at all (C[4095] = 0)
  int32_t draw_batch;  // draws made per Philox call: a stripe's usual need, at most 128

  explicit SkipPlan(double p) : table(kSkipStripe), index(kSkipIndexSize), rare_is_keep(skip_rare_is_keep(p)) {
    skip_table_build(p, table.data());
    skip_index_build(table.data(), index.data());
    any_rare = table[kSkipStripe - 1] != 0u;
    // mean + 4 standard deviations of a stripe's draws (rare count + 1), rounded up to 16
    const double rho = p < 1.0 - p ? p : 1.0 - p;
    const double mean = rho * kSkipStripe + 1.0;
    const double want = mean + 4.0 * std::sqrt(mean) + 4.0;
    draw_batch = want >= 128.0 ? 128 : (static_cast<int32_t>(want) + 15) / 16 * 16;
  }

  // Indices (relative to `first`) of the rare elements of [first, first + n), a range inside one
  // stripe, in increasing order; returns how many. `out` holds at least n entries.
  //
  // The walk of SkipWalker, reordered: a gap searched in the whole table (limit 4096) exceeds
  // what is left of the stripe exactly when the limited search would end the walk, so each
  // batch's gaps depend only on their words (computed first, with no chain through pos), then a
  // running sum places them. Draws come kDrawBatch at a time from the vectorized Philox.
  int32_t rare_in(uint64_t seed, uint64_t first, int32_t n, int32_t* out) const {
    if (!any_rare) return 0;
    constexpr int32_t kDrawBatch = 128;
    const int32_t batch = draw_batch;
    const uint64_t stripe = first >> kSkipStripeLog2;
    const int32_t start = static_cast<int32_t>(first & (kSkipStripe - 1));
    const int32_t stop = start + n;
    alignas(64) uint32_t words[kDrawBatch];
    int32_t gaps[kDrawBatch];
    int32_t count = 0, pos = 0;
    for (uint64_t next_draw = 0;; next_draw += static_cast<uint64_t>(batch)) {
      philox_fill_stripe(seed, stripe, next_draw, batch, words);
      for (int32_t k = 0; k < batch; ++k)
        gaps[k] = skip_gap_indexed(table.data(), index.data(), kSkipStripe, words[k]);
      for (int32_t k = 0; k < batch; ++k) {
        const int32_t r = pos + gaps[k];
        if (r >= stop) return count;  // past the piece, or the stripe has no further rare element
        if (r >= start) out[count++] = r - start;
        pos = r + 1;
      }
    }
  }

  // words[k] = 1 if element first + k is kept, else 0 (the v1 spans' keep test with threshold
  // 1), for a range inside one stripe.
  void keep_words(uint64_t seed, uint64_t first, int32_t n, uint32_t* words, int32_t* scratch) const {
    const int32_t count = rare_in(seed, first, n, scratch);
    std::fill(words, words + n, rare_is_keep ? 0u : 1u);
    for (int32_t k = 0; k < count; ++k) words[scratch[k]] = rare_is_keep ? 1u : 0u;
  }
};

constexpr uint32_t kSkipWordThreshold = 1;  // keep iff word >= 1, for SkipPlan::keep_words

// Calls f(start, count) in parallel over [0, n), pieces cut at the stripe boundaries of the flat
// indices offset + [0, n), so count <= 4096 and a piece is inside one stripe.
template <typename F>
void for_each_stripe_piece(uint64_t offset, int64_t n, int64_t grain, const F& f) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end;) {
      const uint64_t flat = offset + static_cast<uint64_t>(s);
      const int64_t to_boundary = static_cast<int64_t>(kSkipStripe - (flat & (kSkipStripe - 1)));
      const int64_t count = std::min(to_boundary, end - s);
      f(s, static_cast<int32_t>(count));
      s += count;
    }
  });
}

}  // namespace darex::cpu
